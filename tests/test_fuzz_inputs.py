"""Property test: mutated JPEG, PNG and DICOM bytes are accepted cleanly or rejected cleanly.

Starting from real bytes (a full-size sample JPEG, a PNG and a small DICOM made from it),
hypothesis applies byte flips, truncation, insertion, deletion and header edits (PNG IHDR
width/height with a fixed CRC so Pillow reads it, JPEG SOF height/width, DICOM Rows,
Columns, bit depth and samples per pixel). For every input the upload validator
(`diagnoses.imaging.validate_bytes`), `mlcore.imageio.decode_image` and
`mlcore.preprocess.preprocess_image` agree: either the file is accepted, and preprocessing
gives a (224, 224, 1) uint8 array, or it is rejected with `UploadRejected` /
`ImageDecodeError` and a non-empty message. No other exception escapes, and peak memory
stays bounded under the configured pixel limit. A few accepted inputs go through the real
Predictor, and a handful of mutated files go through the upload page (200 with the
message, or a redirect to the new case; never a server error).
"""

from __future__ import annotations

import io
import os
import random
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from fixtures.casedata import NORMAL_SAMPLE, dicom_bytes
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from diagnoses.imaging import UploadRejected, validate_bytes
from mlcore.imageio import ImageDecodeError, decode_image, sniff_format
from mlcore.preprocess import IMAGE_SIZE, preprocess_image

pytest_plugins = ["fixtures.casekit"]
# pydicom warns about every odd element it meets; mutated files are full of them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

# Modest for CI; PNEUMOSITE_FUZZ_EXAMPLES=5000 for a deeper local run.
MAX_EXAMPLES = int(os.environ.get("PNEUMOSITE_FUZZ_EXAMPLES", "150"))
# Peak RSS growth allowed over the whole run: one decode buffer at the pixel limit (Pillow
# keeps RGB in 4 bytes per pixel: 200 MB at 50 MP) plus 200 MB of headroom.
MEMORY_HEADROOM_KB = 200 * 1024
PREDICT_AT_MOST = 4  # accepted inputs that also go through the real model


# --------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------
def _sample_image() -> Image.Image:
    with Image.open(NORMAL_SAMPLE) as image:
        return image.convert("L")


def _png_seed() -> bytes:
    out = io.BytesIO()
    image = _sample_image()
    image.thumbnail((320, 320))
    image.save(out, format="PNG")
    return out.getvalue()


SEEDS = {
    "jpeg": NORMAL_SAMPLE.read_bytes(),
    "png": _png_seed(),
    "dicom": dicom_bytes(NORMAL_SAMPLE, max_side=128),
}


# --------------------------------------------------------------------------------------
# Mutations (plain functions: used by the hypothesis strategy and the upload-page test)
# --------------------------------------------------------------------------------------
def flip(data: bytes, positions: list[int], masks: list[int]) -> bytes:
    out = bytearray(data)
    for position, mask in zip(positions, masks, strict=False):
        out[position % len(out)] ^= mask
    return bytes(out)


def truncate(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def insert(data: bytes, fraction: float, chunk: bytes) -> bytes:
    at = int(len(data) * fraction)
    return data[:at] + chunk + data[at:]


def delete(data: bytes, fraction: float, length: int) -> bytes:
    at = int(len(data) * fraction)
    return data[:at] + data[at + length :]


def png_dimensions(data: bytes, width: int, height: int) -> bytes:
    """Set the IHDR width/height and recompute the chunk CRC (so Pillow trusts the header)."""
    assert data[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + data[33:]


def jpeg_dimensions(data: bytes, width: int, height: int) -> bytes:
    """Set height/width in the first SOFn segment."""
    match = re.search(rb"\xff[\xc0-\xc3\xc5-\xc7\xc9-\xcb\xcd-\xcf]", data[2:])
    if match is None:
        return data
    at = 2 + match.start() + 5  # marker(2) length(2) precision(1)
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]


DICOM_US_TAGS = {  # explicit VR little endian: group, element, "US", length 2, value
    "Rows": (0x0028, 0x0010),
    "Columns": (0x0028, 0x0011),
    "SamplesPerPixel": (0x0028, 0x0002),
    "BitsAllocated": (0x0028, 0x0100),
    "BitsStored": (0x0028, 0x0101),
    "HighBit": (0x0028, 0x0102),
    "PixelRepresentation": (0x0028, 0x0103),
}


def dicom_field(data: bytes, keyword: str, value: int) -> bytes:
    group, element = DICOM_US_TAGS[keyword]
    header = struct.pack("<HH", group, element) + b"US" + struct.pack("<H", 2)
    at = data.find(header)
    assert at > 0, keyword
    at += len(header)
    return data[:at] + struct.pack("<H", value) + data[at + 2 :]


def dicom_group_length(data: bytes, *, vr: bytes = b"UL", length: int = 4) -> bytes:
    """Edit (0002,0000) FileMetaInformationGroupLength's VR or value length."""
    at = data.find(b"\x02\x00\x00\x00UL\x04\x00")
    assert at > 0
    return data[: at + 4] + vr + struct.pack("<H", length) + data[at + 8 :]


def dicom_header_vr(data: bytes) -> bytes:
    """Corrupt the VR of (0008,0016) SOPClassUID (UI -> TI), an attribute de-identification
    keeps: the pixels still read, but the header cannot be written again."""
    at = data.find(b"\x08\x00\x16\x00UI") + 4
    assert at > 4
    return data[:at] + b"TI" + data[at + 2 :]


def _dims():
    side = st.one_of(
        st.integers(0, 64),
        st.integers(65, 10_000),
        st.sampled_from([7_000, 7_071, 7_072, 50_000, 65_535]),
    )
    return st.tuples(side, side)


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = SEEDS[kind]
    operation = draw(
        st.sampled_from(["flip", "truncate", "insert", "delete", "header", "header+flip"])
    )
    if operation.startswith("header"):
        if kind == "png":
            width, height = draw(
                st.one_of(_dims(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))
            )
            data = png_dimensions(data, width, height)
        elif kind == "jpeg":
            width, height = draw(_dims())
            data = jpeg_dimensions(data, width, height)
        else:
            for keyword in draw(st.sets(st.sampled_from(sorted(DICOM_US_TAGS)), min_size=1)):
                value = (
                    draw(_dims())[0]
                    if keyword in ("Rows", "Columns")
                    else draw(st.sampled_from([0, 1, 3, 7, 8, 12, 15, 16, 32, 64, 65_535]))
                )
                data = dicom_field(data, keyword, value)
    if operation in ("flip", "header+flip"):
        count = draw(st.integers(1, 8))
        # Flips cluster in the header, where they change the most.
        limit = draw(st.sampled_from([300, len(data)]))
        positions = draw(st.lists(st.integers(0, limit), min_size=count, max_size=count))
        masks = draw(st.lists(st.integers(1, 255), min_size=count, max_size=count))
        data = flip(data, positions, masks)
    elif operation == "truncate":
        data = truncate(data, draw(st.floats(0, 1)))
    elif operation == "insert":
        data = insert(data, draw(st.floats(0, 1)), draw(st.binary(min_size=1, max_size=64)))
    elif operation == "delete":
        data = delete(data, draw(st.floats(0, 1)), draw(st.integers(1, 256)))
    return f"{kind}/{operation}", data


# --------------------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------------------
def check_input(data: bytes, max_pixels: int) -> Image.Image | str | None:
    """The decoded image when accepted, None when rejected; anything else fails the test."""
    try:
        decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        decode_error = exc
        assert str(exc).strip(), "ImageDecodeError without a message"
    else:
        decode_error = None
    try:
        validated = validate_bytes(data)
    except UploadRejected as exc:
        assert str(exc).strip(), "UploadRejected without a message"
        if decode_error is not None:
            assert str(exc) == str(decode_error)  # the same reason as everywhere else
            # preprocess_image(bytes) refuses the same file for the same reason.
            with pytest.raises(ImageDecodeError, match=re.escape(str(decode_error))):
                preprocess_image(data, max_pixels=max_pixels)
        else:  # pixels readable, but a DICOM header that cannot be de-identified
            assert sniff_format(data) == "DICOM" and "de-identified" in str(exc), exc
        return None
    assert decode_error is None, (
        f"validate_bytes accepted what decode_image refused: {decode_error}"
    )
    assert validated.image.mode == "L"
    assert validated.image.width * validated.image.height <= max_pixels
    for pixels in (
        preprocess_image(validated.image),
        preprocess_image(data, max_pixels=max_pixels),
    ):
        assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 1) and pixels.dtype == np.uint8
    return validated.image


def _proc_status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def test_mutated_inputs_are_accepted_or_rejected_cleanly(settings, reference_predictor):
    max_pixels = settings.PNEUMOSITE_MAX_PIXELS
    assert max_pixels <= 50_000_000
    outcomes: dict[str, list[int]] = {}  # kind/operation -> [accepted, rejected]
    accepted_images: list[Image.Image] = []

    # Reset the peak-RSS mark (Linux: "5" to clear_refs) so the peak below is this run's.
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _proc_status_kb("VmRSS")

    @hsettings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # nothing written into the working tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated())
    def run(case):
        label, data = case
        image = check_input(data, max_pixels)
        outcomes.setdefault(label, [0, 0])[image is None] += 1
        if image is not None and len(accepted_images) < PREDICT_AT_MOST:
            accepted_images.append(image)

    run()
    peak_growth = _proc_status_kb("VmHWM") - rss_before
    print(f"fuzz: {outcomes}; peak RSS +{peak_growth} kB")

    budget_kb = 4 * max_pixels // 1024 + MEMORY_HEADROOM_KB
    assert peak_growth < budget_kb, f"peak RSS grew by {peak_growth} kB (budget {budget_kb} kB)"
    accepted = sum(a for a, _ in outcomes.values())
    rejected = sum(r for _, r in outcomes.values())
    # Both outcomes happen (the generator is not trivially all-good or all-bad).
    assert accepted and rejected, outcomes
    for image in accepted_images:
        reading = reference_predictor.predict(image)
        assert 0.0 <= reading.probability <= 1.0
        assert reading.label in ("normal", "pneumonia")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png_dimensions(SEEDS["png"], 100_000, 100_000), "limit of"),
        (png_dimensions(SEEDS["png"], 2**31 - 1, 2**31 - 1), "limit of"),
        (png_dimensions(SEEDS["png"], 7_000, 7_000), "damaged or incomplete"),
        (jpeg_dimensions(SEEDS["jpeg"], 65_535, 65_535), "limit of"),
        (dicom_field(dicom_field(SEEDS["dicom"], "Rows", 65_535), "Columns", 65_535), "limit of"),
        (dicom_field(SEEDS["dicom"], "Rows", 100), "cannot be decoded"),
        (truncate(SEEDS["jpeg"], 0.5), "damaged or incomplete"),
        (truncate(SEEDS["dicom"], 0.5), "DICOM"),
        (dicom_header_vr(SEEDS["dicom"]), "header is damaged and cannot be de-identified"),
    ],
    ids=[
        "png-100k",
        "png-2^31",
        "png-49M-no-data",
        "jpeg-65535",
        "dicom-65535",
        "dicom-rows-mismatch",
        "jpeg-half",
        "dicom-half",
        "dicom-header-vr",  # a bad VR was a NotImplementedError (a 500), found by the fuzz test
    ],
)
def test_header_edits_are_rejected_with_the_reason(settings, data, message):
    """The mutations do what they claim: these concrete ones are refused for the stated reason."""
    assert check_input(data, settings.PNEUMOSITE_MAX_PIXELS) is None
    with pytest.raises(UploadRejected, match=message):
        validate_bytes(data)


@pytest.mark.parametrize(
    "data",
    [dicom_group_length(SEEDS["dicom"], vr=b"TL"), dicom_group_length(SEEDS["dicom"], length=2)],
    ids=["unknown-vr", "odd-length"],
)
def test_corrupt_dicom_file_meta_is_rejected(data):
    """Found by the fuzz test: pydicom raised NotImplementedError / BytesLengthException."""
    assert check_input(data, 50_000_000) is None
    with pytest.raises(UploadRejected, match="DICOM file is damaged"):
        validate_bytes(data)


@pytest.mark.django_db
def test_upload_page_answers_mutated_files_with_a_message(staff_client, var_dir):
    """A handful of mutated files through the upload form: 200 with the reason, or a case."""
    from diagnoses.models import Case, ModelVersion

    version = ModelVersion(name="fuzz-model", threshold=0.5, image_size=224, is_active=True)
    version.model_file.save("model.keras", ContentFile(b"not a real model"), save=False)
    version.save()

    rng = random.Random(20261126)
    files = [
        ("flip.jpg", flip(SEEDS["jpeg"], [rng.randrange(200) for _ in range(6)], [0xFF] * 6)),
        ("cut.png", truncate(SEEDS["png"], 0.3)),
        ("huge.png", png_dimensions(SEEDS["png"], 60_000, 60_000)),
        ("huge.jpg", jpeg_dimensions(SEEDS["jpeg"], 40_000, 40_000)),
        ("rows.dcm", dicom_field(SEEDS["dicom"], "Rows", 4_000)),
        ("bits.dcm", dicom_field(SEEDS["dicom"], "BitsAllocated", 3)),
        ("junk.png", insert(SEEDS["png"], 0.0, b"GARBAGE")),
        ("cut.dcm", truncate(SEEDS["dicom"], 0.2)),
        ("header.dcm", dicom_header_vr(SEEDS["dicom"])),
    ]
    for name, data in files:
        before = Case.objects.count()
        response = staff_client.post("/upload/", {"files": [SimpleUploadedFile(name, data)]})
        if response.status_code == 302:  # accepted: the mutation left a readable image
            assert Case.objects.count() == before + 1
            continue
        assert response.status_code == 200, (name, response.status_code)
        body = response.content.decode()
        match = re.search(rf"<li>{re.escape(name)}: ([^<]+)</li>", body)
        assert match and match.group(1).strip(), (name, body[-2000:])
        assert Case.objects.count() == before
    assert Case.objects.count() < len(files)  # most of these are refused
