"""Find the same film in two sets, even resized, re-encoded or stretched to a square.

Retraining adds reviewed uploads to the training data and then evaluates on `test/`; an
upload of a `test/` film (the full-size samples are test films) must not be trained on.
A film's fingerprint is a 32x32 thumbnail, centred and scaled to unit length, so the
fingerprints' dot product is the thumbnails' correlation. Measured on this dataset
(`python -m mlcore.duplicates --data ../shared/data/chest_xray`): each full-size sample
against its `test/` copy 0.9999 or more; distinct films at most 0.973 (train against
test). SAME_FILM sits between the two.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from mlcore.imageio import decode_image
from mlcore.preprocess import DATASET_SHORTER_SIDE

FINGERPRINT_SIDE = 32
SAME_FILM = 0.99
MAX_PIXELS = 200_000_000  # uploads were checked against the site's own, lower limit


def fingerprint(data: bytes) -> np.ndarray:
    """A film's fingerprint: unit-length, zero-mean 32x32 thumbnail."""
    film = decode_image(data, max_pixels=MAX_PIXELS, shorter_side=DATASET_SHORTER_SIDE)
    thumbnail = film.resize((FINGERPRINT_SIDE, FINGERPRINT_SIDE), Image.Resampling.BOX)
    vector = np.asarray(thumbnail, dtype=np.float32).ravel()
    vector -= vector.mean()
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


def fingerprints(paths: Iterable[Path]) -> np.ndarray:
    rows = [fingerprint(Path(path).read_bytes()) for path in paths]
    return np.stack(rows) if rows else np.zeros((0, FINGERPRINT_SIDE**2), np.float32)


def closest(candidates: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each candidate: the index of the most similar reference film, and that
    similarity (-1 where there is no reference film)."""
    if not len(reference) or not len(candidates):
        return np.zeros(len(candidates), int), np.full(len(candidates), -1.0)
    similarity = candidates @ reference.T
    best = similarity.argmax(axis=1)
    return best, similarity[np.arange(len(candidates)), best]


def main() -> None:
    """Print the similarities SAME_FILM was chosen between."""
    from mlcore import data as datasets

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout dataset root")
    parser.add_argument("--samples", type=Path, help="full-size copies of test/ films")
    args = parser.parse_args()
    test = datasets.list_split(args.data, "test")
    test_prints = fingerprints(s.path for s in test)
    train_prints = fingerprints(s.path for s in datasets.list_split(args.data, "train"))
    _, train_to_test = closest(train_prints, test_prints)
    print(f"distinct films, train against test: highest {train_to_test.max():.4f}")
    samples = args.samples or args.data.parent / "samples"
    for path in sorted(Path(samples).rglob("*.jpeg")):
        best, similarity = closest(fingerprints([path]), test_prints)
        match = test[best[0]].path.name
        print(f"{path.name}: closest test/ film {match} at {similarity[0]:.5f}")


if __name__ == "__main__":
    main()
