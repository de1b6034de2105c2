"""Does a model read the film's size and shape as a sign of pneumonia?

    python training/film_shape.py --data DIR MODEL_DIR [...]

In train/, children with pneumonia were imaged on smaller, wider films than healthy ones
(younger children). For each model, on the validation carve and the official val/ split,
and within each class, this prints the rank correlation of P(pneumonia) with the original
film's height and with its aspect ratio (width / height). A model free of the shortcut
scores ~0 within a class; negative with height / positive with aspect means smaller or
wider films read as sicker. Carve normals are also split into quartiles of film height.

Film sizes come from the data folder's MANIFEST.csv (`original_width`, `original_height`)
where there is one, as in the resized copy under ../shared/data; otherwise from the
image files themselves (a full-size copy of the dataset).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore import data as datasets  # noqa: E402
from mlcore.metrics import rank_correlation  # noqa: E402
from training.compare_candidates import score_splits  # noqa: E402
from training.splits import DEFAULT_DATA  # noqa: E402

SPLITS = (("carve", "validation carve"), ("val", "official val/"))


def film_sizes(data: Path, splits: dict[str, list[datasets.Sample]]) -> dict[str, np.ndarray]:
    """(width, height) of each film's original, shape [N, 2] per split."""
    known = {}
    manifest = data / "MANIFEST.csv"
    if manifest.exists():
        with manifest.open() as rows:
            for row in csv.DictReader(rows):
                if row["original_width"]:
                    known[row["filename"]] = (
                        int(row["original_width"]),
                        int(row["original_height"]),
                    )

    def size(path: Path) -> tuple[int, int]:
        if path.name not in known:
            with Image.open(path) as image:
                known[path.name] = image.size
        return known[path.name]

    return {
        key: np.array([size(s.path) for s in samples], dtype=np.float64)
        for key, samples in splits.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache"))
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args()
    scores, labels, splits = score_splits(args.models, args.data, args.cache_dir)
    sizes = film_sizes(args.data, splits)
    for key, split_name in SPLITS:
        width, height = sizes[key][:, 0], sizes[key][:, 1]
        for label, label_name in enumerate(datasets.LABELS):
            chosen = labels[key] == label
            aspect = np.median(width[chosen] / height[chosen])
            print(
                f"{split_name} {label_name}: {chosen.sum()} films, median height "
                f"{np.median(height[chosen]):.0f}, aspect {aspect:.2f}"
            )
    for model_dir in args.models:
        print(f"\n{model_dir.name}")
        for index, (key, split_name) in enumerate(SPLITS):
            model_scores = scores[model_dir.name][index]
            width, height = sizes[key][:, 0], sizes[key][:, 1]
            for label, label_name in enumerate(datasets.LABELS):
                chosen = labels[key] == label
                print(
                    f"  {split_name} {label_name}: rank correlation of P(pneumonia) with height "
                    f"{rank_correlation(model_scores[chosen], height[chosen]):+.2f}, with aspect "
                    f"{rank_correlation(model_scores[chosen], width[chosen] / height[chosen]):+.2f}"
                )
        carve_scores = scores[model_dir.name][0]
        normal = labels["carve"] == 0
        order = np.argsort(sizes["carve"][normal, 1], kind="stable")
        quartiles = np.array_split(carve_scores[normal][order], 4)
        medians = ", ".join(f"{np.median(q):.3f}" for q in quartiles)
        print(f"  carve normals, smallest to largest film quartile: median P(pneumonia) {medians}")


if __name__ == "__main__":
    main()
