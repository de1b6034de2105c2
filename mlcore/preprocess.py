"""The one function that turns an image into model input, for training, evaluation and serving."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from mlcore.imageio import DEFAULT_MAX_PIXELS, decode_image, to_grayscale_8bit

IMAGE_SIZE = 224
NORMALIZATIONS = ("equalize", "clahe")
CLAHE_TILES = 8
CLAHE_CLIP_LIMIT = 2.0


def preprocess_image(
    image: bytes | Image.Image,
    size: int = IMAGE_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    normalization: str = "equalize",
) -> np.ndarray:
    """Return a (size, size, 1) uint8 array: grayscale, stretched to a square, normalised.

    Stretching (not cropping) matches the training data, 70% of which exists only as
    224x224 stretched copies. Intensity normalisation removes most of the exposure and
    contrast differences between X-ray machines: global histogram equalisation, or CLAHE
    (contrast-limited, per tile), which keeps local contrast inside the lungs. The model
    rescales to [0, 1] itself.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected {NORMALIZATIONS}")
    if isinstance(image, bytes | bytearray | memoryview):
        image = decode_image(bytes(image), max_pixels=max_pixels)
    image = to_grayscale_8bit(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if normalization == "clahe":
        pixels = clahe(np.asarray(image, dtype=np.uint8))
    else:
        pixels = np.asarray(ImageOps.equalize(image), dtype=np.uint8)
    return pixels[..., np.newaxis]


def clahe(
    pixels: np.ndarray, tiles: int = CLAHE_TILES, clip_limit: float = CLAHE_CLIP_LIMIT
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a 2-D uint8 array.

    Each of tiles x tiles regions gets its own equalisation curve, with every histogram
    bin capped at `clip_limit` times the mean bin count (the excess is spread evenly) so
    that flat regions do not turn into noise. Pixels blend the curves of the four
    nearest tile centres bilinearly, which avoids seams at tile borders.
    """
    height, width = pixels.shape
    row_edges = np.linspace(0, height, tiles + 1).astype(int)
    col_edges = np.linspace(0, width, tiles + 1).astype(int)
    curves = np.empty((tiles, tiles, 256), dtype=np.float32)
    for i in range(tiles):
        for j in range(tiles):
            tile = pixels[row_edges[i] : row_edges[i + 1], col_edges[j] : col_edges[j + 1]]
            histogram = np.bincount(tile.ravel(), minlength=256).astype(np.float32)
            cap = max(clip_limit * tile.size / 256.0, 1.0)
            excess = np.maximum(histogram - cap, 0.0).sum()
            histogram = np.minimum(histogram, cap) + excess / 256.0
            cdf = np.cumsum(histogram)
            curves[i, j] = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0) * 255.0

    def blend_axis(length: int, edges: np.ndarray):
        centres = (edges[:-1] + edges[1:] - 1) / 2.0
        position = np.interp(np.arange(length), centres, np.arange(tiles))
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, tiles - 1)
        return low, high, (position - low).astype(np.float32)

    r0, r1, rw = blend_axis(height, row_edges)
    c0, c1, cw = blend_axis(width, col_edges)
    r0, r1, rw = r0[:, None], r1[:, None], rw[:, None]
    top = curves[r0, c0, pixels] * (1 - cw) + curves[r0, c1, pixels] * cw
    bottom = curves[r1, c0, pixels] * (1 - cw) + curves[r1, c1, pixels] * cw
    return np.clip(np.rint(top * (1 - rw) + bottom * rw), 0, 255).astype(np.uint8)
