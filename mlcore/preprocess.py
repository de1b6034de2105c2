"""The one function that turns an image into model input, for training, evaluation and serving."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from mlcore.imageio import DEFAULT_MAX_PIXELS, decode_image, to_grayscale_8bit

IMAGE_SIZE = 224


def preprocess_image(
    image: bytes | Image.Image, size: int = IMAGE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Return a (size, size, 1) uint8 array: grayscale, stretched to a square, equalised.

    Stretching (not cropping) matches the training data, 70% of which exists only as
    224x224 stretched copies. Histogram equalisation removes most of the exposure and
    contrast differences between X-ray machines. The model rescales to [0, 1] itself.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        image = decode_image(bytes(image), max_pixels=max_pixels)
    image = to_grayscale_8bit(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    image = ImageOps.equalize(image)
    return np.asarray(image, dtype=np.uint8)[..., np.newaxis]
