"""How much a model's scores move when the same films are framed tighter or looser.

    python training/framing_sensitivity.py --model models/NAME [--data DIR]
    python training/framing_sensitivity.py --model models/NAME --film PATH


Each film is zoomed about its centre before preprocessing (factor > 1 crops tighter, < 1 adds a
black margin) and scored again, on the validation carve and on the official val/ split.
Large moves mean the model reads the chest's size in the frame, not only the lungs.
With --film, one film instead: its reading and body share (mlcore.framing) per zoom.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore.framing import body_share, is_unusually_framed, zoom  # noqa: E402
from mlcore.imageio import decode_image  # noqa: E402
from mlcore.inference import Predictor  # noqa: E402
from training.splits import carve_settings, validation_splits  # noqa: E402

ZOOMS = (0.8, 0.9, 1.0, 1.1, 1.2)


def load_films(samples) -> list:
    """The samples' films, decoded to 8-bit grayscale as stored."""
    return [decode_image(sample.path.read_bytes()) for sample in samples]


def framed_inputs(predictor: Predictor, films: list, factor: float) -> np.ndarray:
    """The model inputs of the films zoomed by `factor` about their centre."""
    return np.stack([predictor.preprocess(zoom(film, factor)) for film in films])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/chest_xray")
    parser.add_argument("--film", type=Path, help="re-frame this one film instead")
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    if args.film:
        film = decode_image(args.film.read_bytes())
        for factor in ZOOMS:
            framed = zoom(film, factor)
            reading = predictor.predict(framed)
            share = body_share(framed)
            print(
                f"x{factor}: P(pneumonia) {reading.probability:.3f} ({reading.label}); body share "
                f"{share:.3f}{' (warned)' if is_unusually_framed(share) else ''}"
            )
        return
    print(
        f"threshold {predictor.threshold:.3f}; per zoom: median P(pneumonia) of normal films "
        "(share at or above the threshold) / of pneumonia films; mean grey level of the "
        "centre of the model's input for normal films"
    )
    for name, samples in validation_splits(args.data, carve_settings(args.model)).items():
        films = load_films(samples)
        labels = np.array([s.label for s in samples])
        cells = []
        for factor in ZOOMS:
            pixels = framed_inputs(predictor, films, factor)
            scores = predictor.probabilities(pixels)
            normal, sick = scores[labels == 0], scores[labels == 1]
            flagged = (normal >= predictor.threshold).mean()
            size = predictor.image_size
            centre = pixels[labels == 0, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4]
            cells.append(
                f"x{factor}: {np.median(normal):.2f} ({flagged:.0%}) / {np.median(sick):.2f}"
                f" [{centre.mean():.0f}]"
            )
        print(f"{name:17s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
