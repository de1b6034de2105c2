"""How bright the centre of each film is, per split and label, under three normalisations.

python training/intensity_shift.py --data DIR [--model DIR]

The official val/ split (the same source as test/) differs from the validation carve of
train/. Each film is cut to the body (`body_box`, whatever the model does) and stretched to
224x224; this prints the mean grey level of its central half (lungs, heart and spine) for
the carve and for val/, raw, after histogram equalisation (what the models use) and after
a 1st-99th percentile stretch. A normalisation that generalises should shrink the gap
between the two splits' normal films compared with the gap between normal and pneumonia
films. Model-free: `--model` only names the carve to use. Never reads test/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore.preprocess import Preprocessing  # noqa: E402
from training.splits import carve_settings, validation_splits  # noqa: E402

CROPPED = Preprocessing(size=224, crop_to_body=True)
CENTRE = slice(CROPPED.size // 4, 3 * CROPPED.size // 4)


def centre_means(path: Path) -> dict[str, float]:
    image, _ = CROPPED.framed(path.read_bytes())
    raw = np.asarray(image, np.float32)
    low, high = np.percentile(raw, [1, 99])
    views = {
        "raw": raw,
        "equalised": np.asarray(ImageOps.equalize(image), np.float32),
        "percentile stretch": np.clip((raw - low) / max(high - low, 1.0) * 255, 0, 255),
    }
    return {name: float(view[CENTRE, CENTRE].mean()) for name, view in views.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/pneumonia-w32-20261126"))
    args = parser.parse_args()
    means = {}
    for split, samples in validation_splits(args.data, carve_settings(args.model)).items():
        for label, name in enumerate(("normal", "pneumonia")):
            rows = [centre_means(s.path) for s in samples if s.label == label]
            means[split, name] = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
            print(
                f"{split:17s} {name:9s} n={len(rows):3d}  "
                + "  ".join(f"{k} {v:5.1f}" for k, v in means[split, name].items())
            )
    carve, val = "validation carve", "official val/"
    for view in means[carve, "normal"]:
        split_gap = means[val, "normal"][view] - means[carve, "normal"][view]
        label_gap = means[carve, "pneumonia"][view] - means[carve, "normal"][view]
        print(
            f"{view:18s}: val/ normals are {split_gap:+5.1f} grey levels from the carve's normals; "
            f"carve pneumonia {label_gap:+5.1f} (ratio {split_gap / label_gap:.2f})"
        )


if __name__ == "__main__":
    main()
