"""How much fine detail each kind of film has, as the model sees it.

    python training/detail_level.py [--data DIR] [--crop-to-body]

Fine detail = the equalised 224x224 film minus a Gaussian blur of it (mlcore.preprocess
`normalize_detail` measures it the same way), averaged over the centre of the film. Printed
per split (the rest of train/ by provenance, the validation carve, the official val/), per
label, and for the carve's normal films framed 1.2x tighter, as stored and after
`normalize_detail`. Below each group, the median amount in each band of DETAIL_BANDS (finer
than a blur of 1.5 px, between blurs of 1.5 and 3 px, and of 3 and 6 px), as stored and
after `normalize_detail` of the finest band alone; the first line gives the training
originals' medians, from which the bands' levels were set. No model is involved, and test/
is not read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore import data as datasets  # noqa: E402
from mlcore.framing import zoom  # noqa: E402
from mlcore.imageio import decode_image, to_grayscale_8bit  # noqa: E402
from mlcore.preprocess import (  # noqa: E402
    Preprocessing,
    band_amounts,
    detail_amount,
    normalize_detail,
)
from mlcore.train import TrainConfig  # noqa: E402
from training.splits import DEFAULT_DATA, validation_splits  # noqa: E402

# The carve every model here was trained beside: training's default seed and fraction.
CARVE_SETTINGS = (TrainConfig.split_seed, TrainConfig.val_fraction)


def describe_bands(name: str, amounts: list[list[float]]) -> str:
    return f"{'':42s} {name}: " + " / ".join(f"{m:5.2f}" for m in np.median(amounts, axis=0))


def describe(name: str, amounts: list[float]) -> str:
    values = np.array(amounts)
    low, median, high = np.percentile(values, [25, 50, 75])
    return f"{name:42s} n={values.size:5d}  median {median:5.2f}  quartiles {low:5.2f}-{high:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--crop-to-body", action="store_true")
    args = parser.parse_args()
    plain = Preprocessing(crop_to_body=args.crop_to_body)
    normalized = Preprocessing(crop_to_body=args.crop_to_body, normalize_detail=True)
    splits = validation_splits(args.data, CARVE_SETTINGS)
    carve = {s.path for s in splits["validation carve"]}
    rest = [s for s in datasets.list_split(args.data, "train") if s.path not in carve]
    groups: dict[str, list[datasets.Sample]] = {}
    for sample in rest:
        kind = "224x224 copy" if datasets.is_stretched_copy(sample.path) else "original"
        groups.setdefault(f"train/ (not carve) {kind}", []).append(sample)
    groups.update(splits)
    lines, original_amounts, original_bands = [], [], []
    for group, samples in groups.items():
        for label, label_name in enumerate(datasets.LABELS):
            films = [plain(s.path.read_bytes())[..., 0] for s in samples if s.label == label]
            amounts = [detail_amount(film) for film in films]
            bands = [band_amounts(film) for film in films]
            if group == "train/ (not carve) original":
                original_amounts += amounts
                original_bands += bands
            lines.append(describe(f"{group} {label_name}", amounts))
            lines.append(describe_bands("bands as stored", bands))
            leveled = [band_amounts(normalize_detail(film)) for film in films]
            lines.append(describe_bands("bands after normalize_detail (finest)", leveled))
    print(describe("train/ (not carve) original, both labels", original_amounts))
    print(describe_bands("bands as stored", original_bands))
    print("\n".join(lines))
    normal_films = [
        to_grayscale_8bit(decode_image(s.path.read_bytes()))
        for s in splits["validation carve"]
        if s.label == 0
    ]
    for name, preprocessing in (("as stored", plain), ("normalize_detail", normalized)):
        for factor in (1.0, 1.2):
            amounts = [
                detail_amount(preprocessing(zoom(film, factor))[..., 0]) for film in normal_films
            ]
            print(describe(f"carve NORMAL x{factor} {name}", amounts))


if __name__ == "__main__":
    main()
