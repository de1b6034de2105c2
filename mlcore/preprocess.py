"""The one function that turns an image into model input, for training, evaluation and serving."""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, ImageOps
from threadpoolctl import ThreadpoolController

from mlcore.imageio import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    shrink_to_shorter_side,
    to_grayscale_8bit,
)

IMAGE_SIZE = 224
# Every film of the dataset was made by shrinking the original to this shorter side with
# LANCZOS (../shared/data/README.md), so the test metrics describe films made that way.
DATASET_SHORTER_SIDE = 256
NORMALIZATIONS = ("equalize", "clahe")
CLAHE_TILES = 8
CLAHE_CLIP_LIMIT = 2.0
# The amount of fine detail `normalize_detail` gives every film: about the median of the
# training originals (training/detail_level.py: 5.73 cropped to the body, 5.43 whole).
DETAIL_LEVEL = 5.7
DETAIL_SIGMA = 1.5
# The bands `normalize_detail` can level, fine to coarse: (sigma of the blur below the band,
# its level), the levels about the medians of the training originals cropped to the body
# (training/detail_level.py --crop-to-body: 5.73, 4.53 and 6.54).
DETAIL_BANDS = ((DETAIL_SIGMA, DETAIL_LEVEL), (3.0, 4.5), (6.0, 6.5))
DETAIL_GAIN_RANGE = (0.5, 3.0)
DETAIL_REFINEMENTS = 3
_BLAS = ThreadpoolController()  # numpy's BLAS, found once (gaussian_blur)


@dataclass(frozen=True)
class Preprocessing:
    """How a model's inputs are made; saved in model.json so serving repeats training."""

    size: int = IMAGE_SIZE
    normalization: str = "equalize"
    crop_to_body: bool = False
    normalize_detail: bool = False
    detail_bands: int = 1  # how many of DETAIL_BANDS normalize_detail levels, finest first

    # The options as model.json, TrainConfig and ModelVersion name them.
    SETTING_NAMES: ClassVar[tuple[str, ...]] = (
        "image_size",
        "normalization",
        "crop_to_body",
        "normalize_detail",
        "detail_bands",
    )

    def __post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 16:
            raise ValueError(f"image size must be an integer >= 16, not {self.size!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {self.normalization!r}; expected {NORMALIZATIONS}"
            )
        if not isinstance(self.crop_to_body, bool):
            raise ValueError(f"crop_to_body must be true or false, not {self.crop_to_body!r}")
        if not isinstance(self.normalize_detail, bool):
            raise ValueError(
                f"normalize_detail must be true or false, not {self.normalize_detail!r}"
            )
        bands = self.detail_bands
        if (
            not isinstance(bands, int)
            or isinstance(bands, bool)
            or not 1 <= bands <= len(DETAIL_BANDS)
        ):
            raise ValueError(f"detail_bands must be 1 to {len(DETAIL_BANDS)}, not {bands!r}")
        if bands != 1 and not self.normalize_detail:
            raise ValueError("detail_bands only applies with normalize_detail")

    def as_settings(self) -> dict:
        """The options under SETTING_NAMES, which follow the fields' order."""
        return dict(zip(self.SETTING_NAMES, dataclasses.astuple(self), strict=True))

    @classmethod
    def from_settings(cls, settings: Mapping) -> Preprocessing:
        """The inverse of `as_settings`. Only image_size is required: files and rows made
        before an option existed lack it and get its default."""
        defaults = cls().as_settings()
        values = {name: settings.get(name, default) for name, default in defaults.items()}
        values["image_size"] = settings["image_size"]
        return cls(*values.values())

    def __call__(
        self, image: bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> np.ndarray:
        """A (size, size, 1) uint8 array: grayscale, stretched to a square, normalised.

        A larger film is first brought to the dataset's scale (`source_film`). Stretching
        (not cropping) matches the training data, 70% of which exists only as 224x224
        stretched copies. Intensity normalisation removes most of the exposure and
        contrast differences between X-ray machines: global histogram equalisation, or
        CLAHE (contrast-limited, per tile), which keeps local contrast inside the lungs.
        With `crop_to_body`, the black margins around the patient are cut first (see
        `body_box`): global equalisation spreads a wide margin over part of the grey scale
        and whitens the lungs. With `normalize_detail`, the detail of every film is then
        brought to one level, in the `detail_bands` finest bands of DETAIL_BANDS (see
        `normalize_detail`). The model rescales to [0, 1] itself.
        """
        return self.with_box(image, max_pixels)[0]

    def source_film(
        self, image: bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Image.Image:
        """The grayscale film at the dataset's scale: a film whose shorter side is above
        DATASET_SHORTER_SIDE is shrunk to it, as every film of the dataset was (a model
        whose input is larger keeps its input size instead); smaller ones, which include
        every file of the dataset, are left as they are. A JPEG given as bytes is decoded
        at a reduced scale first, so its pixels differ a little (well under a grey level
        on average) from those of the decoded film given as an image.
        """
        shorter_side = max(DATASET_SHORTER_SIDE, self.size)
        if isinstance(image, bytes | bytearray | memoryview):
            return decode_image(bytes(image), max_pixels, shorter_side)
        return shrink_to_shorter_side(to_grayscale_8bit(image), shorter_side)

    def framed(
        self, image: bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
        """The grayscale square the model sees, before intensity normalisation, and its
        box in the pixels of `source_film(image)` (None: all of it)."""
        image = self.source_film(image, max_pixels)
        box = body_box(image) if self.crop_to_body else None
        if box is not None:
            image = image.crop(box)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return image, box

    def with_box(
        self, image: bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        """The model input, and the part of `source_film(image)` it shows (None: all of it)."""
        image, box = self.framed(image, max_pixels)
        if self.normalization == "clahe":
            pixels = clahe(np.asarray(image, dtype=np.uint8))
        else:
            pixels = np.asarray(ImageOps.equalize(image), dtype=np.uint8)
        if self.normalize_detail:
            pixels = normalize_detail(pixels, DETAIL_BANDS[: self.detail_bands])
        return pixels[..., np.newaxis], box


def preprocess_image(
    image: bytes | Image.Image,
    size: int = IMAGE_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    normalization: str = "equalize",
    crop_to_body: bool = False,
    normalize_detail: bool = False,
    detail_bands: int = 1,
) -> np.ndarray:
    """`Preprocessing(size, normalization, crop_to_body, normalize_detail, detail_bands)(image)`:
    the one input function."""
    preprocessing = Preprocessing(size, normalization, crop_to_body, normalize_detail, detail_bands)
    return preprocessing(image, max_pixels)


def normalize_detail(
    pixels: np.ndarray, bands: Sequence[tuple[float, float]] = DETAIL_BANDS[:1]
) -> np.ndarray:
    """Scale a 2-D uint8 film's detail so that its centre has the same amount in every film.

    Detail is the film minus a Gaussian blur of it; `bands` splits it by scale, each band
    (sigma, level) lying between the blur of the band before (the film itself, first) and a
    blur of `sigma` px, with `level` the amount it is given. How much detail a film keeps
    depends on the original's size and the way it was shrunk, not only on the lungs: the
    224x224 copies that make up 70% of train/ have about a quarter less than the originals.
    The coarsest blur is kept and each band multiplied by a gain, refined on the result (a
    blur of scaled detail is not zero), until each band of the result has its level. The
    gains are limited so that a flat film's noise is not blown up.
    """
    sigmas = [sigma for sigma, _ in bands]
    base, details = detail_bands(pixels.astype(np.float32), sigmas)
    amounts = [_central_amount(detail) for detail in details]  # the film's own: gains 1
    gains = [1.0] * len(details)
    for refinement in range(DETAIL_REFINEMENTS):
        if refinement:
            result = _recompose(base, details, gains)
            amounts = band_amounts(result, bands)
        gains = [
            float(np.clip(gain * level / max(amount, 1e-6), *DETAIL_GAIN_RANGE))
            for gain, (_, level), amount in zip(gains, bands, amounts, strict=True)
        ]
    return _recompose(base, details, gains).astype(np.uint8)


def band_amounts(
    film: np.ndarray, bands: Sequence[tuple[float, float]] = DETAIL_BANDS
) -> list[float]:
    """The mean absolute detail over the centre of a 2-D film in each of `bands`.

    Only the centre of each blur is computed, a third of the arithmetic of whole blurs:
    `normalize_detail` measures every film this way at each refinement.
    """
    film = film.astype(np.float32)
    rows, cols = _central_slices(film.shape)
    blurs = [film[rows, cols]] + [gaussian_blur(film, sigma, rows, cols) for sigma, _ in bands]
    return [float(np.mean(np.abs(finer - coarser))) for finer, coarser in itertools.pairwise(blurs)]


def _central_amount(detail: np.ndarray) -> float:
    return float(np.mean(np.abs(central_half(detail))))


def _recompose(base: np.ndarray, details: list[np.ndarray], gains: list[float]) -> np.ndarray:
    film = base
    for detail, gain in zip(details, gains, strict=True):
        film = film + gain * detail
    return np.clip(np.rint(film), 0, 255)


def detail_bands(film: np.ndarray, sigmas: Sequence[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A 2-D float film as its blur at the last sigma plus one band of detail per sigma."""
    blurs = [film] + [gaussian_blur(film, sigma) for sigma in sigmas]
    return blurs[-1], [blurs[index] - blurs[index + 1] for index in range(len(sigmas))]


def detail_amount(pixels: np.ndarray, sigma: float = DETAIL_SIGMA) -> float:
    """Mean absolute fine detail over the central half of a 2-D film (lungs, heart, spine)."""
    return band_amounts(pixels, [(sigma, DETAIL_LEVEL)])[0]


def central_half(film: np.ndarray) -> np.ndarray:
    """The middle half of a 2-D film in each direction: no margins, labels or markers."""
    return film[_central_slices(film.shape)]


def _central_slices(shape: tuple[int, int]) -> tuple[slice, slice]:
    height, width = shape
    return slice(height // 4, 3 * height // 4), slice(width // 4, 3 * width // 4)


def gaussian_taps(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian kernel reaching 3 sigma each side (odd length, float32)."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def gaussian_blur(
    film: np.ndarray, sigma: float, rows: slice = slice(None), cols: slice = slice(None)
) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array, edges mirrored; only the `rows` and
    `cols` of the result are computed.

    Each pass is one product with a banded matrix (`blur_matrix`). That does more
    arithmetic than sliding the taps along the film, but BLAS does it several times faster,
    and `normalize_detail` blurs each film nine times. On one BLAS thread: a second gains
    nothing at this size, and once woken it spins for a while after the product, taking a
    core from the forward pass that follows (bench/bench_reading_parts.py). The limit
    is the process's: threads that blur at once (mlcore.data) can run a blur on two BLAS
    threads or leave BLAS on one, which changes the speed, never the result.
    """
    with _BLAS.limit(limits=1, user_api="blas"):
        down, across = blur_matrix(film.shape[0], sigma), blur_matrix(film.shape[1], sigma)
        return down[rows] @ film @ across[cols].T


@functools.lru_cache(maxsize=32)
def blur_matrix(length: int, sigma: float) -> np.ndarray:
    """The (length, length) float32 matrix that blurs a column of `length` values.

    Row i holds the taps centred on i; a tap that falls outside the column lands on its
    mirror image (numpy's "reflect": the edge value is not repeated), folded as often as
    needed when the taps are longer than the column.
    """
    taps = gaussian_taps(sigma)
    radius = taps.size // 2
    period = max(2 * (length - 1), 1)
    source = np.abs(np.arange(length)[:, np.newaxis] + np.arange(-radius, radius + 1)) % period
    source = np.where(source >= length, period - source, source)
    matrix = np.zeros((length, length), np.float32)
    rows = np.repeat(np.arange(length), taps.size)
    np.add.at(matrix, (rows, source.ravel()), np.tile(taps, length))
    matrix.flags.writeable = False  # shared by every caller through the cache
    return matrix


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


def body_box(
    image: Image.Image, min_share: float = 0.2, margin: float = 0.03
) -> tuple[int, int, int, int] | None:
    """The (left, top, right, bottom) box around the patient, or None to keep the whole film.

    On a thumbnail, pixels brighter than Otsu's threshold are the body (soft tissue and
    bone; the background is air). Rows and columns where at least `min_share` of the
    pixels are body bound the box, so side markers and labels do not widen it. A flat
    or tiny film has no box.
    """
    thumbnail = image.copy()
    thumbnail.thumbnail((256, 256))
    pixels = np.asarray(thumbnail)
    height, width = pixels.shape
    if min(height, width) < 16 or pixels.min() == pixels.max():
        return None
    body = pixels > _otsu_threshold(pixels)
    rows = np.flatnonzero(body.mean(axis=1) >= min_share)
    cols = np.flatnonzero(body.mean(axis=0) >= min_share)
    if rows.size < 2 or cols.size < 2:
        return None
    # The margin is a share of the body, not of the film, so that the same patient
    # framed tighter or looser gives the same crop.
    pad_y, pad_x = margin * (rows[-1] + 1 - rows[0]), margin * (cols[-1] + 1 - cols[0])
    top, bottom = max(0.0, rows[0] - pad_y), min(height, rows[-1] + 1 + pad_y)
    left, right = max(0.0, cols[0] - pad_x), min(width, cols[-1] + 1 + pad_x)
    scale_x, scale_y = image.width / width, image.height / height
    return (
        round(left * scale_x),
        round(top * scale_y),
        round(right * scale_x),
        round(bottom * scale_y),
    )


def scale_box(
    box: tuple[int, int, int, int], size: tuple[int, int], new_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A box in the pixels of an image of `size`, in those of the same image at `new_size`
    (at least one pixel wide and high)."""
    if size == new_size:
        return box
    scale_x, scale_y = new_size[0] / size[0], new_size[1] / size[1]
    left, top = round(box[0] * scale_x), round(box[1] * scale_y)
    return left, top, max(round(box[2] * scale_x), left + 1), max(round(box[3] * scale_y), top + 1)


def _otsu_threshold(pixels: np.ndarray) -> int:
    """The grey level that best splits the histogram into two classes (Otsu, 1979)."""
    histogram = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(histogram) / histogram.sum()
    mean = np.cumsum(histogram * np.arange(256)) / histogram.sum()
    between = (mean[-1] * weight - mean) ** 2 / np.maximum(weight * (1 - weight), 1e-12)
    return int(np.argmax(between))
