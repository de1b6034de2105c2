"""Training time per epoch on this machine's CPU: `python bench/bench_training.py`.

Runs `mlcore.train` for two epochs on the full train split (minus the validation carve)
with the shipped architecture and prints the seconds of each epoch (the first includes
graph tracing) from the run's train_metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlcore.train import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/chest_xray")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            data=args.data,
            out=Path(out) / "m",
            epochs=args.epochs,
            width=args.width,
            cache_dir=REPO / "var/cache",
        )
        train(config, log=lambda line: None)
        report = json.loads((config.out / "train_metrics.json").read_text())
    counts = report["data"]["train"]
    images = counts["normal"] + counts["pneumonia"]
    print(
        f"width {args.width}, {images} training images, {os.cpu_count()} CPUs: "
        f"seconds per epoch {report['training']['seconds_per_epoch']}"
    )


if __name__ == "__main__":
    main()
