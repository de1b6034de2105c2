"""Compare trained candidates (and their averages) on the validation carve only.

python training/compare_candidates.py --data DIR MODEL_DIR [MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from mlcore import data as datasets
from mlcore.inference import Predictor
from mlcore.metrics import binary_metrics, pick_threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache"))
    parser.add_argument("--min-sensitivity", type=float, default=0.98)
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args()
    configs = {m: json.loads((m / "train_metrics.json").read_text())["config"] for m in args.models}
    carve = {(c["split_seed"], c["val_fraction"]) for c in configs.values()}
    assert len(carve) == 1, "candidates must share one validation carve"
    split_seed, fraction = carve.pop()
    _, validation = datasets.carve_validation(
        datasets.list_split(args.data, "train"), fraction=fraction, seed=split_seed
    )
    pixels, labels = datasets.load_arrays(validation, 224, args.cache_dir)
    scores = {m.name: Predictor.load(m).probabilities(pixels) for m in args.models}
    names = sorted(scores)
    for size in range(1, len(names) + 1):
        for group in itertools.combinations(names, size):
            mean = np.mean([scores[n] for n in group], axis=0)
            threshold = pick_threshold(labels, mean, args.min_sensitivity)
            m = binary_metrics(labels, mean, threshold)
            print(
                f"{'+'.join(group):45s} AUC {m['auc']:.4f} thr {threshold:.3f} "
                f"sens {m['sensitivity']:.3f} spec {m['specificity']:.3f} acc {m['accuracy']:.3f}"
            )


if __name__ == "__main__":
    main()
