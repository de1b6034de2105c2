"""How far a threshold alone could take a shipped model on test/: a bound, not an operating point.

    python training/threshold_bound.py models/NAME [models/NAME ...]

Reads the per-image probabilities that `python -m mlcore.evaluate` stored in each model's
test_metrics.json (nothing is evaluated again) and asks, over every threshold: the most
specificity with sensitivity >= 97%, the best accuracy, and whether any threshold meets issue
3's four targets at once. The answer uses test/ labels, so it must never choose a threshold;
it only tells whether the gap to the targets lies in the threshold or in the ranking.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore.metrics import binary_metrics, pick_threshold, roc_curve  # noqa: E402

TARGETS = {"accuracy": 0.95, "sensitivity": 0.97, "specificity": 0.90}
TARGET_AUC = 0.985


def stored_test_scores(model_dir: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, probabilities, the model's own threshold) from its test_metrics.json."""
    report = json.loads((model_dir / "test_metrics.json").read_text())
    labels = np.array([row["label"] for row in report["per_image"]])
    scores = np.array([row["probability"] for row in report["per_image"]])
    return labels, scores, report["metrics"]["threshold"]


def meets_targets(metrics: dict) -> bool:
    return all(metrics[name] >= bound for name, bound in TARGETS.items())


def threshold_bound(labels: np.ndarray, scores: np.ndarray) -> dict:
    """The best that any one threshold gives on these labels, by three measures."""
    _, _, thresholds = roc_curve(labels, scores)
    every = [binary_metrics(labels, scores, t) for t in thresholds[1:]]
    at_sensitivity = binary_metrics(labels, scores, pick_threshold(labels, scores, 0.97))
    return {
        "at_sensitivity_97": at_sensitivity,
        "most_accurate": max(every, key=lambda m: m["accuracy"]),
        "thresholds_meeting_targets": sum(meets_targets(m) for m in every),
    }


def describe(metrics: dict) -> str:
    return (
        f"thr {metrics['threshold']:.4f}  acc {metrics['accuracy']:.1%}  "
        f"sens {metrics['sensitivity']:.1%}  spec {metrics['specificity']:.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args()
    for model_dir in args.models:
        labels, scores, own_threshold = stored_test_scores(model_dir)
        shipped = binary_metrics(labels, scores, own_threshold)
        bound = threshold_bound(labels, scores)
        print(f"{model_dir.name}  (test AUC {shipped['auc']:.4f}, target {TARGET_AUC})")
        print(f"  its validation threshold          {describe(shipped)}")
        print(f"  most specific with sens >= 97%    {describe(bound['at_sensitivity_97'])}")
        print(f"  most accurate threshold           {describe(bound['most_accurate'])}")
        print(f"  thresholds meeting acc/sens/spec  {bound['thresholds_meeting_targets']}")


if __name__ == "__main__":
    main()
