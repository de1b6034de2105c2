"""How much of a film the patient fills: a check that the film is framed like the training data.

The shipped model reads histogram-equalised films, and a wide black margin changes what
equalisation does to the body: with a 10% margin on each side, it called 99% of the
healthy validation films sick (training/framing_sensitivity.py). The body fills at least
0.647 of the film in 99% of train/ (training/body_share.py: 1st percentile), so a film
below MIN_TYPICAL_BODY_SHARE is framed unlike anything the model learnt from.
"""

from __future__ import annotations

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
