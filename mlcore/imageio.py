"""Decode uploaded X-ray bytes (JPEG, PNG, DICOM) into an 8-bit grayscale PIL image.

Every caller (upload validation, training, serving) goes through `decode_image`, so a file
is accepted or rejected for the same reason everywhere.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 32

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
EXIF_ORIENTATION = 0x0112


class ImageDecodeError(ValueError):
    """The bytes are not an X-ray image we can read; the message is meant for the user."""


def sniff_format(data: bytes) -> str | None:
    """Return 'JPEG', 'PNG' or 'DICOM' from the file's leading bytes, or None."""
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "DICOM"
    return None


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, shorter_side: int | None = None
) -> Image.Image:
    """Decode a whole file into an 8-bit grayscale ('L') image, or raise ImageDecodeError.

    With `shorter_side`, a film whose shorter side is longer than that comes back shrunk to
    it (`shrink_to_shorter_side`). A JPEG is then decoded at a reduced scale first: with the
    shrink, several times faster than decoding every pixel of a full-size film and shrinking
    that.
    """
    if not data:
        raise ImageDecodeError("The file is empty.")
    kind = sniff_format(data)
    if kind is None:
        raise ImageDecodeError(
            "Unsupported file type: only JPEG, PNG and DICOM chest X-rays are accepted."
        )
    image = (
        _decode_dicom(data, max_pixels, shorter_side)
        if kind == "DICOM"
        else _decode_raster(data, kind, max_pixels, shorter_side)
    )
    if min(image.size) < MIN_SIDE:
        raise ImageDecodeError(
            f"The image is {image.width}x{image.height} pixels, too small to be a chest X-ray "
            f"(at least {MIN_SIDE} pixels per side)."
        )
    return image


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"The image is {width}x{height} pixels, over the limit of {max_pixels:,} pixels."
        )


def _decode_raster(
    data: bytes, kind: str, max_pixels: int, shorter_side: int | None
) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the guard; Pillow's warning would only pre-empt it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            _check_pixel_count(image.width, image.height, max_pixels)
            decoded_part = None
            if kind == "JPEG" and shorter_side is not None:
                decoded_part = _request_reduced_scale(image, shorter_side)
            image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            f"The image has more pixels than the limit of {max_pixels:,} pixels."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(
            f"The {kind} file is damaged or incomplete and cannot be read."
        ) from exc
    image = to_grayscale_8bit(ImageOps.exif_transpose(image))
    if shorter_side is None:
        return image
    return shrink_to_shorter_side(image, shorter_side, decoded_part)


def _request_reduced_scale(
    image: Image.Image, shorter_side: int
) -> tuple[float, float, float, float] | None:
    """Before `image` loads, ask libjpeg to decode it at the smallest of 1/2, 1/4 and 1/8
    scale that keeps `shorter_side`; the part of the reduced pixels that the film covers,
    or None where it is decoded whole.

    A film with an EXIF orientation is decoded whole: the part would have to turn with it.
    """
    if min(image.size) < 2 * shorter_side or image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        return None
    drafted = image.draft(image.mode, (shorter_side, shorter_side))
    return None if drafted is None else drafted[1]


def shrink_to_shorter_side(
    image: Image.Image,
    shorter_side: int,
    part: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    """`image` shrunk with LANCZOS so that its shorter side is `shorter_side` px, the aspect
    ratio kept; unchanged where that side is not longer.

    `part` is the box of `image` that the film covers, for a film decoded at a reduced
    scale: libjpeg rounds a reduced side up (1857 px at 1/4 decode to 465 pixels, of which
    464.25 are the film). The result then has the size and the pixel grid of the whole
    film shrunk.
    """
    left, top, right, bottom = part or (0, 0, *image.size)
    width, height = right - left, bottom - top
    if min(width, height) <= shorter_side:
        return image
    if width <= height:
        size = (shorter_side, round(height * shorter_side / width))
    else:
        size = (round(width * shorter_side / height), shorter_side)
    return image.resize(size, Image.Resampling.LANCZOS, box=part)


def to_grayscale_8bit(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 'L': 16-bit and float images are stretched over their own range."""
    if image.mode == "L":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return array_to_grayscale(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L")


def array_to_grayscale(pixels: np.ndarray) -> Image.Image:
    """Stretch a 2-D numeric array linearly from its minimum to its maximum onto 0..255."""
    values = np.asarray(pixels, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        scaled = np.zeros(values.shape, dtype=np.uint8)
    else:
        scaled = np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"


def _read_dicom_header(data: bytes, max_pixels: int):
    """The dataset without its pixels, refused before anything large is decoded.

    A deflated dataset is inflated whole in memory by pydicom (a 25 MB upload could
    become gigabytes), and every frame of a multi-frame image is decoded at once, so
    both are checked here, from the header alone.
    """
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        stream = io.BytesIO(data)
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
        if str(meta.get("TransferSyntaxUID", "")) == DEFLATED_TRANSFER_SYNTAX:
            raise ImageDecodeError("Deflated DICOM files are not supported.")
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except ImageDecodeError:
        raise
    except Exception as exc:  # a corrupt header raises many types (unknown VR, bad length...)
        raise ImageDecodeError("The DICOM file is damaged and cannot be read.") from exc
    rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    if rows * columns * frames * samples > max_pixels:
        raise ImageDecodeError(
            f"The DICOM image holds {frames} frame(s) of {columns}x{rows} pixels, over the "
            f"limit of {max_pixels:,} pixels."
        )
    return header


def _decode_dicom(data: bytes, max_pixels: int, shorter_side: int | None) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _read_dicom_header(data, max_pixels)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise ImageDecodeError("The DICOM file is damaged and cannot be read.") from exc
    if "PixelData" not in dataset:
        raise ImageDecodeError("The DICOM file holds no image (it has no pixel data).")
    try:
        pixels = dataset.pixel_array
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[0]
        if pixels.ndim != 2:
            raise ImageDecodeError("Only single-channel (grayscale) DICOM images are supported.")
        pixels = apply_modality_lut(pixels, dataset)
        pixels = apply_voi_lut(pixels, dataset)
    except ImageDecodeError:
        raise
    except Exception as exc:  # pydicom raises many types for bad or compressed pixel data
        raise ImageDecodeError(
            "The DICOM pixel data cannot be decoded (damaged, or a compression we do not support)."
        ) from exc
    image = array_to_grayscale(pixels)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = ImageOps.invert(image)
    return image if shorter_side is None else shrink_to_shorter_side(image, shorter_side)
