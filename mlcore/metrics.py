"""Binary classification metrics in plain NumPy (no scikit-learn dependency)."""

from __future__ import annotations

import numpy as np


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]
    true_positives = np.cumsum(labels)[distinct]
    false_positives = (distinct + 1) - true_positives
    positives, negatives = max(labels.sum(), 1), max((~labels).sum(), 1)
    tpr = np.r_[0.0, true_positives / positives]
    fpr = np.r_[0.0, false_positives / negatives]
    thresholds = np.r_[np.inf, scores[distinct]]
    return fpr, tpr, thresholds


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    return {
        "tn": int((~labels & ~predicted).sum()),
        "fp": int((~labels & predicted).sum()),
        "fn": int((labels & ~predicted).sum()),
        "tp": int((labels & predicted).sum()),
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Accuracy, precision, sensitivity, specificity, F1, AUC and the confusion matrix."""
    counts = confusion(labels, scores, threshold)
    tp, tn, fp, fn = counts["tp"], counts["tn"], counts["fp"], counts["fn"]
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "n": int(len(labels)),
        "n_normal": tn + fp,
        "n_pneumonia": tp + fn,
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "sensitivity": sensitivity,
        "recall": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * precision * sensitivity, precision + sensitivity),
        "auc": roc_auc(labels, scores),
        "confusion_matrix": {
            "rows": "true [normal, pneumonia]",
            "cols": "predicted [normal, pneumonia]",
            "values": [[tn, fp], [fn, tp]],
        },
    }


def pick_threshold(labels: np.ndarray, scores: np.ndarray, min_sensitivity: float) -> float:
    """The highest threshold whose sensitivity is at least `min_sensitivity`.

    A triage tool must not miss pneumonia, so sensitivity is the constraint; among the
    thresholds that keep it, the highest one calls the fewest healthy children sick.
    """
    _, tpr, thresholds = roc_curve(labels, scores)
    admissible = np.flatnonzero(tpr >= min_sensitivity)
    return float(thresholds[admissible[0]]) if admissible.size else float(np.min(scores))


def rank_correlation(a, b) -> float:
    """Spearman's rho, ties given their average rank."""

    def ranks(values) -> np.ndarray:
        _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        return ((ends - counts + ends - 1) / 2)[inverse]

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])
