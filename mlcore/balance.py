"""Sample weights that keep the film's shape from predicting the label.

In train/, pneumonia films are much wider than normal ones (median aspect 1.48 against 1.21
on the validation carve) and smaller (median height 808 against 1382 pixels): the sick
children are younger. Within each class the shipped model scores wider and smaller films as
sicker (`training/film_shape.py`), so a healthy toddler risks being read as ill. Weighting
the training films so that both classes share one distribution of aspect ratios takes that
shortcut away where the shape is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mlcore.data import STRETCHED_COPY_SIZE


def film_aspect(path: Path) -> float | None:
    """Width / height of the stored film; None for a 224x224 stretched copy (shape lost)."""
    with Image.open(path) as image:
        if image.size == STRETCHED_COPY_SIZE:
            return None
        return image.width / image.height


def shape_balancing_weights(
    aspects: Sequence[float | None],
    labels: np.ndarray,
    bins: int = 5,
    max_weight: float = 4.0,
) -> np.ndarray:
    """One weight per film: the target share of its aspect bin over its class's share.

    Bins are quantiles of the known aspects; the target is the even mix of the two classes'
    distributions, so neither class is pulled all the way to look like the other. A bin that
    one class lacks cannot be matched. Weights are clipped to [1/max_weight, max_weight] and
    rescaled to average 1 within each class, so class balancing is left to the class
    weights. Films of unknown aspect keep weight 1.
    """
    labels = np.asarray(labels).astype(int)
    weights = np.ones(len(labels), dtype=np.float64)
    known = np.array([aspect is not None for aspect in aspects], dtype=bool)
    if known.sum() < bins or len(set(labels[known])) < 2:
        return weights
    values = np.array([aspect for aspect in aspects if aspect is not None], dtype=np.float64)
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    bin_of = np.digitize(values, edges)
    known_labels = labels[known]
    class_shares = [
        np.bincount(bin_of[known_labels == label], minlength=bins) / (known_labels == label).sum()
        for label in (0, 1)
    ]
    target_share = (class_shares[0] + class_shares[1]) / 2
    known_weights = np.empty(len(values))
    for label in (0, 1):
        in_class = known_labels == label
        ratio = target_share[bin_of[in_class]] / class_shares[label][bin_of[in_class]]
        ratio = np.clip(ratio, 1 / max_weight, max_weight)
        known_weights[in_class] = ratio / ratio.mean()
    weights[known] = known_weights
    return weights
