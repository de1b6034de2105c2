"""Custom augmentation layers (registered, so saved models that use them load again)."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from mlcore.preprocess import gaussian_taps


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


@keras.saving.register_keras_serializable(package="mlcore")
class RandomDetailGain(layers.Layer):
    """Soften or sharpen each film's detail finer than `sigma` pixels by a random gain.

    Input in [0, 1]. The film is split into a Gaussian blur (`sigma`) and the rest, and the
    rest is multiplied by a gain drawn log-uniformly from [1 / max_gain, max_gain] per image
    (below 1 blurs, above 1 sharpens, like an unsharp mask). In train/, healthy films carry
    more such detail than pneumonia films, while the healthy films of the official val/
    split carry about as little as pneumonia films (training/detail_level.py); this shows
    the model soft and sharp films of both labels. Identity at inference.
    """

    def __init__(self, max_gain: float, sigma: float = 3.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not max_gain > 1.0:
            raise ValueError(
                f"max_gain must be above 1 (1.5: between 1/1.5 and 1.5), not {max_gain}"
            )
        self.max_gain, self.sigma, self.seed = max_gain, sigma, seed
        self._generator = keras.random.SeedGenerator(seed)
        self._taps = gaussian_taps(sigma)
        self._radius = self._taps.size // 2

    def _blur(self, images):
        size = self._taps.size
        for kernel_shape, pad in (
            ((size, 1, 1, 1), ((0, 0), (self._radius, self._radius), (0, 0), (0, 0))),
            ((1, size, 1, 1), ((0, 0), (0, 0), (self._radius, self._radius), (0, 0))),
        ):
            kernel = ops.convert_to_tensor(self._taps.reshape(kernel_shape))
            images = ops.conv(ops.pad(images, pad, mode="reflect"), kernel, padding="valid")
        return images

    def call(self, images, training=True):
        if not training:
            return images
        smooth = self._blur(images)
        log_gain = keras.random.uniform(
            (ops.shape(images)[0], 1, 1, 1),
            -math.log(self.max_gain),
            math.log(self.max_gain),
            seed=self._generator,
        )
        return ops.clip(smooth + ops.exp(log_gain) * (images - smooth), 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "max_gain": self.max_gain,
            "sigma": self.sigma,
            "seed": self.seed,
        }
