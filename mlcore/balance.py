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
from PIL import ExifTags, Image, UnidentifiedImageError

from mlcore.data import STRETCHED_COPY_SIZE, Sample
from mlcore.metrics import rank_correlation
from mlcore.shape_estimator import ShapeEstimator

QUARTER_TURNS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def film_aspect(path: Path) -> float | None:
    """Width / height of the stored film; None for a 224x224 stretched copy (shape lost) or a
    file Pillow cannot open (DICOM: its shape stays unknown)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(ExifTags.Base.Orientation) in QUARTER_TURNS:
                width, height = height, width
    except (OSError, UnidentifiedImageError):
        return None
    return None if (width, height) == STRETCHED_COPY_SIZE else width / height


def shape_balancing_weights(
    aspects: Sequence[float | None],
    labels: np.ndarray,
    bins: int = 5,
    max_weight: float = 4.0,
) -> np.ndarray:
    """One weight per film: the target share of its aspect bin over its class's share.

    Bins are quantiles of the known aspects; the target is the even mix of the two classes'
    distributions, so neither class is pulled all the way to look like the other (the ratio
    is then at least 1/2). A bin that one class lacks cannot be matched. Ratios are capped at
    `max_weight` and rescaled to average 1 within each class, so class balancing is left to
    the class weights (after the rescale a weight may slightly exceed the cap). Films of
    unknown aspect keep weight 1.
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
        ratio = np.minimum(ratio, max_weight)
        known_weights[in_class] = ratio / ratio.mean()
    weights[known] = known_weights
    return weights


def film_shape_weights(
    train: Sequence[Sample],
    validation: Sequence[Sample],
    estimate: bool = False,
    seed: int | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, dict]:
    """Balancing weights for the training films, and a summary for the training report.

    With `estimate`, the shape of each stretched copy is guessed by a `ShapeEstimator`
    fitted on the training originals (see `_estimate_unknown_aspects`).
    """
    aspects = [film_aspect(sample.path) for sample in train]
    labels = np.array([sample.label for sample in train])
    summary: dict = {"films_of_known_shape": sum(a is not None for a in aspects)}
    if estimate:
        summary.update(_estimate_unknown_aspects(train, validation, aspects, seed, cache_dir, log))
    return shape_balancing_weights(aspects, labels), summary


MIN_FILMS_TO_FIT_ESTIMATOR = 20


def _estimate_unknown_aspects(train, validation, aspects, seed, cache_dir, log) -> dict:
    """Fill the None entries of `aspects` in place with guesses; a summary of the fit.

    The guesses are checked on the validation originals, within each class too: the label
    alone ranks their aspect ratios well (pneumonia films are wider), so only a high
    within-class correlation shows the estimator reads the shape rather than the disease.
    """
    known_indices = [i for i, aspect in enumerate(aspects) if aspect is not None]
    unknown_indices = [i for i, aspect in enumerate(aspects) if aspect is None]
    if not unknown_indices:
        return {}
    if len(known_indices) < MIN_FILMS_TO_FIT_ESTIMATOR:
        log(f"film shape: only {len(known_indices)} films of known shape, nothing estimated")
        return {"films_of_estimated_shape": 0}
    estimator = ShapeEstimator.fit(
        [train[i] for i in known_indices],
        [aspects[i] for i in known_indices],
        seed=seed,
        cache_dir=cache_dir,
    )
    guesses = estimator.estimate([train[i] for i in unknown_indices], cache_dir)
    for index, guess in zip(unknown_indices, guesses, strict=True):
        aspects[index] = float(guess)
    summary: dict = {"films_of_estimated_shape": len(unknown_indices)}
    originals = [(s, film_aspect(s.path)) for s in validation]
    originals = [(sample, aspect) for sample, aspect in originals if aspect is not None]
    if len(originals) > 2:
        checked_guesses = estimator.estimate([sample for sample, _ in originals], cache_dir)
        truths = np.array([aspect for _, aspect in originals])
        classes = np.array([sample.label for sample, _ in originals])
        check = {"all": _finite_or_none(rank_correlation(checked_guesses, truths))}
        for label, name in enumerate(("normal", "pneumonia")):
            chosen = classes == label
            if chosen.sum() > 2:
                rho = rank_correlation(checked_guesses[chosen], truths[chosen])
                check[name] = _finite_or_none(rho)
        summary["estimator_rank_correlation_on_validation_originals"] = check
        log(f"film-shape estimator: rank correlation on {len(originals)} originals {check}")
    return summary


def _finite_or_none(value: float) -> float | None:
    return round(value, 4) if np.isfinite(value) else None
