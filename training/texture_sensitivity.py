"""Does a model read film grain, blur or sharpness as pneumonia?

    python training/texture_sensitivity.py --model models/NAME [--data DIR]

Smaller films were shrunk less to reach the stored size, so they keep more grain; if a model
had learnt grain as a sign of pneumonia, noise would raise the scores of healthy films. Each
film of the validation carve and the official val/ split is scored as stored, with Gaussian
noise, blurred, halved then restored in resolution, and sharpened (unsharp mask, radius /
percent): healthy films of the official val/ have less fine detail than train/'s
(training/detail_level.py), and a model that reads soft films as sick flags fewer of them
once they are sharpened.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore.imageio import decode_image  # noqa: E402
from training.splits import model_and_validation_splits  # noqa: E402


def with_noise(film: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    noisy = np.asarray(film, np.float32) + rng.normal(0, sigma, (film.height, film.width))
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def halved(film: Image.Image) -> Image.Image:
    small = film.resize((film.width // 2, film.height // 2), Image.LANCZOS)
    return small.resize(film.size, Image.LANCZOS)


def main() -> None:
    predictor, splits = model_and_validation_splits(__doc__)
    rng = np.random.default_rng(0)
    changes = {
        "as stored": lambda film: film,
        "noise 3": lambda film: with_noise(film, 3, rng),
        "noise 6": lambda film: with_noise(film, 6, rng),
        "blur 0.7": lambda film: film.filter(ImageFilter.GaussianBlur(0.7)),
        "blur 1.5": lambda film: film.filter(ImageFilter.GaussianBlur(1.5)),
        "halved": halved,
        "sharpen 2/100": lambda film: film.filter(ImageFilter.UnsharpMask(2, 100, 0)),
        "sharpen 4/150": lambda film: film.filter(ImageFilter.UnsharpMask(4, 150, 0)),
    }
    print(
        f"threshold {predictor.threshold:.3f}; median P(pneumonia) of normal films (share at "
        "or above the threshold) / of pneumonia films"
    )
    for name, samples in splits.items():
        films = [decode_image(s.path.read_bytes()) for s in samples]
        labels = np.array([s.label for s in samples])
        cells = []
        for change_name, change in changes.items():
            pixels = np.stack([predictor.preprocess(change(film)) for film in films])
            scores = predictor.probabilities(pixels)
            normal, sick = scores[labels == 0], scores[labels == 1]
            flagged = (normal >= predictor.threshold).mean()
            cells.append(
                f"{change_name}: {np.median(normal):.3f} ({flagged:.0%}) / {np.median(sick):.3f}"
            )
        print(f"{name:17s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
