"""The two splits the scripts under training/ judge a trained model on, never test/."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore import data as datasets  # noqa: E402
from mlcore.inference import Predictor  # noqa: E402
from mlcore.serialization import TRAIN_REPORT  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared/data/chest_xray"


def carve_settings(model_dir: Path) -> tuple[int, float]:
    """(split seed, fraction) of the validation carve the model was trained beside."""
    config = json.loads((model_dir / TRAIN_REPORT).read_text())["config"]
    return config["split_seed"], config["val_fraction"]


def validation_splits(data: Path, settings: tuple[int, float]) -> dict[str, list[datasets.Sample]]:
    """{"validation carve": patient-wise carve of train/, "official val/": the 16 images}."""
    split_seed, fraction = settings
    _, carve = datasets.carve_validation(
        datasets.list_split(data, "train"), fraction=fraction, seed=split_seed
    )
    return {"validation carve": carve, "official val/": datasets.list_split(data, "val")}


def model_and_validation_splits(
    description: str,
) -> tuple[Predictor, dict[str, list[datasets.Sample]]]:
    """Parse `--model DIR [--data DIR]`; the loaded model and the splits it is judged on."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    return Predictor.load(args.model), validation_splits(args.data, carve_settings(args.model))
