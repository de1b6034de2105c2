"""Upload validation by content, DICOM de-identification and derived images."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from PIL import Image

from mlcore.imageio import ImageDecodeError, decode_image, sniff_format

DISPLAY_MAX_SIDE = 1600
DISPLAY_JPEG_QUALITY = 92
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png"}  # of the images derived from uploads
THUMBNAIL_MAX_SIDE = 160

# What a de-identified DICOM keeps: the attributes needed to decode and window the image
# and to say what kind of film it is. Everything else (names, IDs, dates, institutions,
# free text, private tags, and whatever sits in sequences) is dropped, so an attribute
# this list does not know can never leak.
DICOM_KEPT_KEYWORDS = frozenset(
    {
        "SpecificCharacterSet",
        "ImageType",
        "SOPClassUID",
        "Modality",
        "ConversionType",
        "PresentationIntentType",
        "BodyPartExamined",
        "ViewPosition",
        "PatientOrientation",
        "ImageLaterality",
        "Laterality",
        "BurnedInAnnotation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "PixelSpacing",
        "ImagerPixelSpacing",
        "PixelSpacingCalibrationType",
        "PixelAspectRatio",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "PixelPaddingValue",
        "PixelPaddingRangeLimit",
        "PixelIntensityRelationship",
        "PixelIntensityRelationshipSign",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "ModalityLUTSequence",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "VOILUTSequence",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
    }
)
# Inside the kept LUT sequences, only the table itself (no free-text explanation).
DICOM_KEPT_LUT_KEYWORDS = frozenset({"LUTDescriptor", "ModalityLUTType", "LUTData"})
# UIDs can be looked up in the source PACS, so fresh ones stand in for them.
DICOM_NEW_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# Type 2 attributes of the patient and study modules: present, but empty.
DICOM_EMPTY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


class UploadRejected(ValueError):
    """An uploaded file is not accepted; str() is the message shown to the user."""


@dataclass(frozen=True)
class ValidatedImage:
    stored_bytes: bytes  # what is kept as the case's original
    image_format: str
    image: Image.Image  # decode_image's 8-bit grayscale output
    sha256: str


def validate_upload(uploaded: UploadedFile) -> ValidatedImage:
    """Accept a JPEG, PNG or DICOM that decodes fully within the size and pixel limits."""
    max_bytes = settings.PNEUMOSITE_MAX_UPLOAD_BYTES
    # Django has already streamed a large upload to a temporary file; checking the size
    # here keeps an oversized one from being read into memory.
    if uploaded.size is not None and uploaded.size > max_bytes:
        raise UploadRejected(
            f"The file is {human_size(uploaded.size)}, over the limit of {human_size(max_bytes)}."
        )
    data = uploaded.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadRejected(f"The file is over the limit of {human_size(max_bytes)}.")
    return validate_bytes(data)


def human_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    return f"{max(size / 1024, 0.1):.1f} KB"


def validate_bytes(data: bytes) -> ValidatedImage:
    try:
        image = decode_image(data, max_pixels=settings.PNEUMOSITE_MAX_PIXELS)
    except ImageDecodeError as exc:
        raise UploadRejected(str(exc)) from exc
    image_format = sniff_format(data)
    stored = data
    if image_format == "DICOM":
        try:
            stored = deidentify_dicom(data)
        except Exception as exc:  # pydicom raises many types for a malformed header element
            # decode_image reads only the pixel attributes; a header that cannot be
            # de-identified must not be stored (it may carry patient data).
            raise UploadRejected(
                "The DICOM header is damaged and cannot be de-identified."
            ) from exc
    return ValidatedImage(
        stored_bytes=stored,
        image_format=image_format,
        image=image,
        sha256=hashlib.sha256(stored).hexdigest(),
    )


def deidentify_dicom(data: bytes) -> bytes:
    """Return a copy of a DICOM file that keeps the image and nothing that identifies anyone.

    JPEG and PNG originals are kept byte-for-byte, but a DICOM header routinely carries
    the patient's name, ID and birth date, also nested in sequences, which this site must
    not store (the user identifies a case only by the reference they type). So the
    "original" kept for a DICOM is a new dataset holding only DICOM_KEPT_KEYWORDS, with
    fresh UIDs. Text burnt into the pixels themselves is not removed.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(io.BytesIO(data))
    kept = _allowed_copy(source, DICOM_KEPT_KEYWORDS)
    for keyword in DICOM_NEW_UID_KEYWORDS:
        setattr(kept, keyword, generate_uid())
    for keyword in DICOM_EMPTY_KEYWORDS:
        setattr(kept, keyword, "")
    kept.PatientIdentityRemoved = "YES"
    kept.DeidentificationMethod = "pneumosite: image attributes kept, all others removed"
    kept.file_meta = FileMetaDataset()
    kept.file_meta.TransferSyntaxUID = source.file_meta.TransferSyntaxUID
    kept.file_meta.MediaStorageSOPClassUID = source.get(
        "SOPClassUID", source.file_meta.get("MediaStorageSOPClassUID")
    )
    kept.file_meta.MediaStorageSOPInstanceUID = kept.SOPInstanceUID
    out = io.BytesIO()
    kept.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _allowed_copy(source, keywords: frozenset[str]):
    """A new dataset with the elements of `source` named in `keywords`; in a kept
    sequence, each item keeps only the LUT attributes."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    kept = Dataset()
    for element in source:
        if element.keyword not in keywords:
            continue
        if element.VR == "SQ":
            items = [_allowed_copy(item, DICOM_KEPT_LUT_KEYWORDS) for item in element.value]
            kept.add_new(element.tag, "SQ", Sequence(items))
        else:
            kept.add(element)
    return kept


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    image = image.copy()
    image.info = {}  # Pillow would write a JPEG comment (which may name the patient) again
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def display_file(image: Image.Image, source_format: str) -> tuple[bytes, str]:
    """The image the pages show, at most DISPLAY_MAX_SIDE px, and its file extension.

    A JPEG original is shown as JPEG at quality DISPLAY_JPEG_QUALITY: it was lossy already,
    and as PNG it came out several times the size of the original and its encoding was
    most of an upload's CPU time (bench/bench_reading_parts.py). PNG and DICOM originals
    are shown losslessly, as PNG.
    Neither carries the original's metadata.
    """
    fitted = _fit(image, DISPLAY_MAX_SIDE)
    if source_format != "JPEG":
        return encode_png(fitted), EXTENSIONS["PNG"]
    return encode_jpeg(fitted, DISPLAY_JPEG_QUALITY), EXTENSIONS["JPEG"]


def thumbnail_jpeg(image: Image.Image) -> bytes:
    return encode_jpeg(_fit(image, THUMBNAIL_MAX_SIDE).convert("L"), quality=85)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def encode_png(image: Image.Image) -> bytes:
    """Fast zlib level: the default (6) made PNG encoding most of an upload's CPU time."""
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
