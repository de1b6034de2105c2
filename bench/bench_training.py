"""Training time per epoch on this machine's CPU: `python bench/bench_training.py`.

Runs `mlcore.train` for two epochs on the full train split (minus the validation carve)
with the shipped architecture and prints the seconds of each epoch (the first includes
graph tracing) from the run's train_metrics.json, and the seconds spent outside the epochs
(loading the cached arrays, and with --estimate-film-shape fitting mlcore.shape_estimator).
With --teacher DIR it trains on that model's readings (mlcore.distill), with the teacher's
input options, so each step also runs the teacher's forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlcore.serialization import ModelMetadata  # noqa: E402
from mlcore.train import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/chest_xray")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--estimate-film-shape", action="store_true")
    parser.add_argument("--teacher", type=Path, help="a model folder to learn from")
    args = parser.parse_args()
    inputs = ModelMetadata.read(args.teacher).preprocessing.as_settings() if args.teacher else {}
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            data=args.data,
            out=Path(out) / "m",
            epochs=args.epochs,
            width=args.width,
            cache_dir=REPO / "var/cache",
            estimate_film_shape=args.estimate_film_shape,
            teacher=args.teacher,
            **inputs,
        )
        train(config, log=lambda line: None)
        report = json.loads((config.out / "train_metrics.json").read_text())
    counts = report["data"]["train"]
    images = counts["normal"] + counts["pneumonia"]
    timing = report["training"]
    outside = timing["seconds"] - sum(timing["seconds_per_epoch"])
    print(
        f"width {args.width}, {images} training images, {os.cpu_count()} CPUs"
        f"{', film-shape estimator' if args.estimate_film_shape else ''}"
        f"{f', teacher {args.teacher.name}' if args.teacher else ''}: seconds per epoch "
        f"{timing['seconds_per_epoch']}, outside the epochs {outside:.1f}"
    )


if __name__ == "__main__":
    main()
