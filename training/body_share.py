"""The share of each film's area that the patient fills, per split and label.

    python training/body_share.py [--data DIR]

The 1st percentile over train/ is where mlcore.framing.MIN_TYPICAL_BODY_SHARE comes from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore import data as datasets  # noqa: E402
from mlcore.framing import body_share  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/chest_xray")
    args = parser.parse_args()
    for split in ("train", "val"):
        samples = datasets.list_split(args.data, split)
        shares = np.array([body_share(Image.open(s.path)) for s in samples])
        labels = np.array([s.label for s in samples])
        for name, mask in (
            ("all", labels >= 0),
            ("normal", labels == 0),
            ("pneumonia", labels == 1),
        ):
            p1, p5, p50 = np.percentile(shares[mask], [1, 5, 50])
            print(
                f"{split:5s} {name:9s} n={mask.sum():4d} "
                f"percentiles 1/5/50: {p1:.3f} {p5:.3f} {p50:.3f}"
            )


if __name__ == "__main__":
    main()
