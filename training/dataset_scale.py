"""Serving full-size films at the dataset's scale: the checks of round 16 (CANDIDATES.md).

    python training/dataset_scale.py [--data DATASET_ROOT] [--model DIR ...]

1. Every file of the dataset is left as it is by the shrink to the dataset's scale.
2. On the 12 full-size samples, the reduced-scale JPEG decode against the dataset's recipe
   (the whole film decoded, then shrunk with LANCZOS), beside the difference the dataset's
   own JPEG re-encoding (quality 90) makes to that recipe: mean absolute grey levels.
3. With `--model`: each sample's reading from its full-size file, from its 256 px copy in
   `test/` (the film the test metrics describe), and as recorded in the model's
   sample_readings.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore.imageio import decode_image, shrink_to_shorter_side  # noqa: E402
from mlcore.inference import Predictor  # noqa: E402
from mlcore.preprocess import DATASET_SHORTER_SIDE  # noqa: E402
from training.splits import DEFAULT_DATA  # noqa: E402

SAMPLES = REPO / "tests" / "fixtures" / "samples"
DATASET_JPEG = {"quality": 90, "optimize": True, "progressive": True}  # the data README's


def files_changed_by_the_shrink(root: Path) -> tuple[int, list[Path]]:
    paths = sorted(root.glob("*/*/*.jpeg"))
    changed = [
        path
        for path in paths
        if not np.array_equal(
            np.asarray(decode_image(blob := path.read_bytes())),
            np.asarray(decode_image(blob, shorter_side=DATASET_SHORTER_SIDE)),
        )
    ]
    return len(paths), changed


def reencoded(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **DATASET_JPEG)
    return Image.open(buffer)


def mean_abs(a: Image.Image, b: Image.Image) -> float:
    return float(np.mean(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, action="append", default=[])
    args = parser.parse_args()

    count, changed = files_changed_by_the_shrink(args.data)
    print(f"1. dataset files changed by the shrink: {len(changed)} of {count}")
    for path in changed[:10]:
        print(f"   {path}")

    samples = sorted(SAMPLES.glob("*/*.jpeg"))
    reduced, reencoding = [], []
    for path in samples:
        blob = path.read_bytes()
        recipe = shrink_to_shorter_side(decode_image(blob), DATASET_SHORTER_SIDE)
        reduced.append(mean_abs(decode_image(blob, shorter_side=DATASET_SHORTER_SIDE), recipe))
        reencoding.append(mean_abs(reencoded(recipe), recipe))
    print(
        f"2. {len(samples)} samples, mean absolute difference to the recipe, grey levels: "
        f"reduced-scale decode {np.mean(reduced):.3f} (worst film {max(reduced):.3f}); "
        f"the dataset's JPEG re-encoding {np.mean(reencoding):.3f} (worst {max(reencoding):.3f})"
    )

    for model_dir in args.model:
        predictor = Predictor.load(model_dir)
        recorded = json.loads((model_dir / "sample_readings.json").read_text())["readings"]
        print(f"\n3. `{predictor.version}`, threshold {predictor.threshold:.4f}\n")
        print("| sample | full-size file | its `test/` copy | recorded |\n|---|---:|---:|---:|")
        gaps = []
        for path in samples:
            full = predictor.predict(path.read_bytes()).probability
            copy_path = args.data / "test" / path.parent.name / path.name
            copy = predictor.predict(copy_path.read_bytes()).probability
            before = recorded[path.name]["probability"]
            gaps.append((abs(full - copy), abs(before - copy)))
            print(f"| {path.name} | {full:.4f} | {copy:.4f} | {before:.4f} |")
        now, then = np.mean(gaps, axis=0)
        print(f"\nmean |full-size - copy|: {now:.4f} now, {then:.4f} for the recorded readings")


if __name__ == "__main__":
    main()
