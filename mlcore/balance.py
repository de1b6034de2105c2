"""Sample weights that keep the film's shape from predicting the label.

In train/, pneumonia films are much wider than normal ones (median aspect 1.48 against 1.21
on the validation carve) and smaller (median height 808 against 1382 pixels): the sick
children are younger. Within each class the shipped model scores wider and smaller films as
sicker (`training/film_shape.py`), so a healthy toddler risks being read as ill. Weighting
the training films so that both classes share one distribution of aspect ratios takes that
shortcut away where the shape is known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mlcore.data import STRETCHED_COPY_SIZE, Sample
from mlcore.metrics import rank_correlation
from mlcore.shape_estimator import ShapeEstimator


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


def film_shape_weights(
    train: Sequence[Sample],
    validation: Sequence[Sample],
    estimate: bool = False,
    seed: int | None = None,
    cache_dir=None,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, dict]:
    """Balancing weights for the training films, and a summary for the training report.

    With `estimate`, the shape of each stretched copy is guessed by a `ShapeEstimator`
    fitted on the training originals, and the guesses are checked on the validation
    originals (rank correlation with their true aspect ratio).
    """
    aspects = [film_aspect(sample.path) for sample in train]
    labels = np.array([sample.label for sample in train])
    summary: dict = {"films_of_known_shape": sum(a is not None for a in aspects)}
    unknown = [i for i, aspect in enumerate(aspects) if aspect is None]
    if estimate and unknown:
        known = [i for i, aspect in enumerate(aspects) if aspect is not None]
        estimator = ShapeEstimator.fit(
            [train[i] for i in known], [aspects[i] for i in known], seed=seed, cache_dir=cache_dir
        )
        for index, guess in zip(
            unknown, estimator.estimate([train[i] for i in unknown], cache_dir), strict=True
        ):
            aspects[index] = float(guess)
        checked = [(s, film_aspect(s.path)) for s in validation]
        checked = [(s, aspect) for s, aspect in checked if aspect is not None]
        if len(checked) > 2:
            guesses = estimator.estimate([s for s, _ in checked], cache_dir)
            rho = rank_correlation(guesses, [aspect for _, aspect in checked])
            summary["estimator_rank_correlation_on_validation"] = round(rho, 4)
            log(f"film-shape estimator: rank correlation {rho:.3f} on {len(checked)} originals")
        summary["films_of_estimated_shape"] = len(unknown)
        summary["median_aspect"] = {
            kind: {
                name: round(float(np.median([aspects[i] for i in group if labels[i] == label])), 3)
                for label, name in enumerate(("normal", "pneumonia"))
            }
            for kind, group in (("known", known), ("estimated", unknown))
        }
    return shape_balancing_weights(aspects, labels), summary
