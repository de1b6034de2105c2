"""Re-record shipped models' readings of the 12 full-size samples, after a change to how
films are read (the regression fixture of tests/test_mlcore_model.py).

    python training/record_sample_readings.py models/NAME [models/NAME ...]

Only each model's sample_readings.json changes: nothing is evaluated on test/ again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.package_model import record_sample_readings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--samples", type=Path, default=REPO.parent / "shared/data/samples")
    args = parser.parse_args()
    for model_dir in args.models:
        record_sample_readings(model_dir, args.samples)
        print(f"recorded {model_dir / 'sample_readings.json'}")


if __name__ == "__main__":
    main()
