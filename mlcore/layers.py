"""A custom augmentation layer (registered, so saved models that use it load again)."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="mlcore")
class RandomCentreBrightness(layers.Layer):
    """Lighten or darken the middle of the film by up to `factor`, fading towards the edges.

    Input in [0, 1]. The change is a Gaussian bump (`sigma` in units of half the image
    side) times a random amount in [-factor, factor] per image. Healthy children of the
    official val/ split have whiter film centres than those of train/
    (training/intensity_shift.py); this shows the model films whose centre alone is lighter
    or darker, whatever their label. Identity at inference.
    """

    def __init__(self, factor: float, sigma: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.sigma, self.seed = factor, sigma, seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        rows = ops.linspace(-1.0, 1.0, images.shape[1]) ** 2
        cols = ops.linspace(-1.0, 1.0, images.shape[2]) ** 2
        bump = ops.exp(-(rows[:, None] + cols[None, :]) / (2.0 * self.sigma**2))
        amount = keras.random.uniform(
            (ops.shape(images)[0], 1, 1, 1), -self.factor, self.factor, seed=self._generator
        )
        return ops.clip(images + amount * bump[None, :, :, None], 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "factor": self.factor,
            "sigma": self.sigma,
            "seed": self.seed,
        }
