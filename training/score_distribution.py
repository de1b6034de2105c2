"""How a model scores healthy children on the validation carve and on the official val/.

    python training/score_distribution.py --model models/NAME [--data DIR]

A gap between the two shows the shift between train/ and the official val/ and test/
splits without looking at test/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore import data as datasets  # noqa: E402
from mlcore.metrics import roc_auc  # noqa: E402
from training.splits import model_and_validation_splits  # noqa: E402


def main() -> None:
    predictor, splits = model_and_validation_splits(__doc__)
    for name, samples in splits.items():
        pixels, labels = datasets.load_arrays(samples, predictor.preprocessing)
        scores = predictor.probabilities(pixels)
        normal, sick = scores[labels == 0], scores[labels == 1]
        print(
            f"{name}: {len(normal)} normal images, P(pneumonia) min {normal.min():.2f} "
            f"median {np.median(normal):.2f} max {normal.max():.2f}; AUC "
            f"{roc_auc(labels, scores):.4f}; {int((sick >= predictor.threshold).sum())} of "
            f"{len(sick)} pneumonia images at or above the threshold {predictor.threshold:.3f}"
        )


if __name__ == "__main__":
    main()
