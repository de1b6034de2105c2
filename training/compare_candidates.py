"""Compare trained candidates (and averages of them) without looking at test/.

python training/compare_candidates.py --data DIR MODEL_DIR [...] [--average A,B,C ...]

For each model, and for each `--average` group of model folder names, prints:
- on the validation carve of train/: AUC, the threshold picked by the training rule
  (highest with sensitivity >= --min-sensitivity) and specificity/accuracy there;
- on the 16 images of the official val/ split (the same source as test/): log-loss,
  the median P(pneumonia) of its 8 normal films, and how many of its 8 normal and 8
  pneumonia films reach the carve threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore import data as datasets  # noqa: E402
from mlcore.inference import Predictor  # noqa: E402
from mlcore.metrics import binary_metrics, pick_threshold  # noqa: E402
from training.splits import carve_settings, validation_splits  # noqa: E402


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def score_splits(models: list[Path], data: Path, cache_dir: Path):
    """{model name: (carve scores, val/ scores)}, the labels of both splits, and their films.

    Labels and films are keyed "carve" and "val".
    """
    settings = {carve_settings(m) for m in models}
    if len(settings) != 1:
        raise SystemExit("candidates must share one validation carve")
    splits = dict(
        zip(("carve", "val"), validation_splits(data, settings.pop()).values(), strict=True)
    )
    scores, labels = {}, {}
    for model_dir in models:
        predictor = Predictor.load(model_dir)
        per_split = []
        for name, samples in splits.items():
            pixels, labels[name] = datasets.load_arrays(samples, predictor.preprocessing, cache_dir)
            per_split.append(predictor.probabilities(pixels))
        scores[model_dir.name] = tuple(per_split)
    return scores, labels, splits


def report_line(name: str, carve_scores, val_scores, labels, min_sensitivity: float) -> str:
    threshold = pick_threshold(labels["carve"], carve_scores, min_sensitivity)
    m = binary_metrics(labels["carve"], carve_scores, threshold)
    val_labels = labels["val"]
    normal_median = float(np.median(val_scores[val_labels == 0]))
    caught = int((val_scores[val_labels == 1] >= threshold).sum())
    flagged = int((val_scores[val_labels == 0] >= threshold).sum())
    n_normal = int((val_labels == 0).sum())
    return (
        f"{name:32s} carve AUC {m['auc']:.4f} thr {threshold:.3f} spec {m['specificity']:.3f} "
        f"acc {m['accuracy']:.3f} | val/ log-loss {log_loss(val_labels, val_scores):.3f} "
        f"normal median {normal_median:.2f} normals flagged {flagged}/{n_normal} "
        f"pneumonia caught {caught}/{int(val_labels.sum())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache"))
    parser.add_argument("--min-sensitivity", type=float, default=0.98)
    parser.add_argument(
        "--average", action="append", default=[], help="comma-separated model folder names"
    )
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args()
    scores, labels, _ = score_splits(args.models, args.data, args.cache_dir)
    groups = [[m.name] for m in args.models] + [g.split(",") for g in args.average]
    for group in groups:
        carve_scores = np.mean([scores[n][0] for n in group], axis=0)
        val_scores = np.mean([scores[n][1] for n in group], axis=0)
        print(report_line("+".join(group), carve_scores, val_scores, labels, args.min_sensitivity))


if __name__ == "__main__":
    main()
