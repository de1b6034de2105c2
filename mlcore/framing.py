"""How much of a film the patient fills: a check that the film is framed like the training data.

The shipped model reads histogram-equalised films, and a wide black margin changes what
equalisation does to the body: with a 10% margin on each side, it called 99% of the
healthy validation films sick (training/framing_sensitivity.py). The body fills at least
0.647 of the film in 99% of train/ (training/body_share.py: 1st percentile), so a film
below MIN_TYPICAL_BODY_SHARE is framed unlike anything the model learnt from.

`zoom` re-frames a film (tighter or with a margin); `RandomFraming` draws tighter frames
of the training films, so a model meets chests that fill more of the film than usual.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image

from mlcore.imageio import to_grayscale_8bit
from mlcore.preprocess import body_box

MIN_TYPICAL_BODY_SHARE = 0.65


def body_share(image: Image.Image) -> float:
    """The share of the film's area inside the box around the patient (1.0: no margins found)."""
    gray = to_grayscale_8bit(image)
    box = body_box(gray)
    if box is None:
        return 1.0
    left, top, right, bottom = box
    return (right - left) * (bottom - top) / (gray.width * gray.height)


def is_unusually_framed(share: float) -> bool:
    return share < MIN_TYPICAL_BODY_SHARE


def zoom(image: Image.Image, factor: float, shift: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """The film framed `factor` times tighter (> 1: a crop; < 1: a black margin).

    `shift` moves a tighter frame within the film, from -1 (left / top edge) to 1 (right /
    bottom edge); 0 centres it.
    """
    width, height = round(image.width / factor), round(image.height / factor)
    spare_x, spare_y = image.width - width, image.height - height
    if factor >= 1:
        left = (spare_x + round(shift[0] * spare_x)) // 2
        top = (spare_y + round(shift[1] * spare_y)) // 2
        return image.crop((left, top, left + width, top + height))
    left, top = spare_x // 2, spare_y // 2
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(image, (-left, -top))
    return canvas


@dataclass(frozen=True)
class RandomFraming:
    """One tighter frame per film, drawn from the film's name: view `view` of a training set.

    Framing must vary before preprocessing, not inside the network: the body crop and
    histogram equalisation both depend on what the frame holds (training/framing_sensitivity.py).
    The zoom is log-uniform in [1, max_zoom], the frame shifted at random within the film.
    The same (view, name) always gives the same frame, so the views can be cached.
    """

    max_zoom: float
    view: int

    def __post_init__(self):
        if not self.max_zoom > 1:
            raise ValueError(f"max_zoom must be above 1, not {self.max_zoom!r}")

    def __call__(self, image: Image.Image, name: str) -> Image.Image:
        rng = random.Random(f"{self.view}|{float(self.max_zoom)}|{name}")
        factor = math.exp(rng.uniform(0.0, math.log(self.max_zoom)))
        return zoom(image, factor, (rng.uniform(-1, 1), rng.uniform(-1, 1)))
