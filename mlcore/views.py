"""Training batches that show each film in one of several framings, drawn anew every epoch."""

from __future__ import annotations

import math

import keras
import numpy as np


class RandomViewBatches(keras.utils.PyDataset):
    """Batches of (images, labels, weights) for `model.fit`.

    `views` is (V, N, S, S, 1) uint8: V framings of the same N films (view 0 as stored).
    Every epoch the films are shuffled and each is shown in one view drawn at random, so an
    epoch has as many steps as without views and costs the same.
    """

    def __init__(
        self,
        views: np.ndarray,
        labels: np.ndarray,
        sample_weight: np.ndarray,
        batch_size: int,
        seed: int,
    ):
        super().__init__()
        if views.ndim != 5 or views.shape[1] != len(labels):
            raise ValueError(f"views must be (V, N, S, S, 1) with N = {len(labels)} films")
        self.views, self.labels = views, labels.astype(np.float32)
        self.sample_weight = sample_weight.astype(np.float32)
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        self._draw()

    def _draw(self) -> None:
        self._order = self._rng.permutation(len(self.labels))
        self._view_of = self._rng.integers(len(self.views), size=len(self.labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.views[self._view_of[rows], rows].astype(np.float32)
        return images, self.labels[rows], self.sample_weight[rows]

    def on_epoch_end(self) -> None:
        self._draw()
