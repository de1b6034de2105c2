"""Guess the original aspect ratio of a film that exists only as a stretched square copy.

70% of train/ are 224x224 copies stretched from films of unknown shape. Stretching leaves
the anatomy squashed by the film's aspect ratio, so a small CNN trained on the originals
(whose shape is known) reads it back. `mlcore.balance` uses the guesses to weight every
training film, not only the originals.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from mlcore import data as datasets
from mlcore.preprocess import Preprocessing

ESTIMATOR_INPUT = Preprocessing(size=96)


def build_shape_estimator(seed: int | None = None) -> keras.Model:
    """Input: a stretched 96x96 film (0..255). Output: its standardised log aspect ratio."""
    size = ESTIMATOR_INPUT.size
    inputs = keras.Input((size, size, 1), name="stretched_film")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed)(x)
    x = layers.RandomRotation(0.02, fill_mode="constant", seed=seed)(x)
    for filters in (16, 32, 64, 96):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2, seed=seed)(x)
    return keras.Model(inputs, layers.Dense(1)(x), name="film_shape_estimator")


class ShapeEstimator:
    """Fitted on films of known aspect; `estimate` returns aspect ratios (width / height)."""

    def __init__(self, model: keras.Model, mean: float, scale: float):
        self.model, self.mean, self.scale = model, mean, scale

    @classmethod
    def fit(
        cls,
        samples: Sequence[datasets.Sample],
        aspects: Sequence[float],
        epochs: int = 12,
        seed: int | None = None,
        cache_dir=None,
    ) -> ShapeEstimator:
        pixels, _ = datasets.load_arrays(samples, ESTIMATOR_INPUT, cache_dir)
        targets = np.log(np.asarray(aspects, dtype=np.float64))
        mean, scale = float(targets.mean()), float(targets.std() or 1.0)
        model = build_shape_estimator(seed)
        steps = epochs * int(np.ceil(len(samples) / 32))
        model.compile(
            keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)), "mse"
        )
        model.fit(
            pixels.astype(np.float32),
            ((targets - mean) / scale).astype(np.float32),
            epochs=epochs,
            batch_size=32,
            verbose=0,
        )
        return cls(model, mean, scale)

    def estimate(self, samples: Sequence[datasets.Sample], cache_dir=None) -> np.ndarray:
        pixels, _ = datasets.load_arrays(samples, ESTIMATOR_INPUT, cache_dir)
        standardised = self.model.predict(pixels.astype(np.float32), batch_size=128, verbose=0)
        return np.exp(standardised.ravel() * self.scale + self.mean)
