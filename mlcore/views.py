"""Training batches that show each film in one of several framings, drawn anew every epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np


class RandomViewBatches(keras.utils.PyDataset):
    """Batches of (images, labels, weights) for `model.fit`.

    `views` are V (N, S, S, 1) uint8 arrays: V framings of the same N films (view 0 as
    stored). Every epoch the films are shuffled and each is shown in one view drawn at
    random, so an epoch has as many steps as without views and costs the same.
    """

    def __init__(
        self,
        views: Sequence[np.ndarray],
        labels: np.ndarray,
        sample_weight: np.ndarray,
        batch_size: int,
        seed: int,
    ):
        super().__init__()
        if any(view.shape[0] != len(labels) for view in views):
            raise ValueError(f"every view must hold the same N = {len(labels)} films")
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
        images = np.stack([self.views[self._view_of[row]][row] for row in rows])
        images = images.astype(np.float32)
        return images, self.labels[rows], self.sample_weight[rows]

    def on_epoch_end(self) -> None:
        self._draw()
