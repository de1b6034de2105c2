"""Upload page: validation by content, storage of the original and derived images, queueing."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from fixtures.casedata import NORMAL_SAMPLE, PNEUMONIA_SAMPLE, dicom_bytes, png_bytes, stored_files
from PIL import Image

from diagnoses.imaging import (
    DICOM_EMPTY_KEYWORDS,
    DICOM_KEPT_KEYWORDS,
    DICOM_NEW_UID_KEYWORDS,
    deidentify_dicom,
)
from diagnoses.models import Case, ModelVersion, Prediction
from mlcore.imageio import decode_image

KEPT_OR_BLANKED_DICOM_KEYWORDS = (
    DICOM_KEPT_KEYWORDS
    | set(DICOM_NEW_UID_KEYWORDS)
    | set(DICOM_EMPTY_KEYWORDS)
    | {"PatientIdentityRemoved", "DeidentificationMethod"}
)

pytest_plugins = ["fixtures.casekit"]
pytestmark = pytest.mark.django_db


@pytest.fixture
def model_version(var_dir):
    """A registered, active model version; these tests never run it."""
    version = ModelVersion(name="test-model", threshold=0.5, image_size=224, is_active=True)
    version.model_file.save("model.keras", ContentFile(b"not a real model"), save=False)
    version.save()
    return version


def upload(client, *files, **fields):
    return client.post("/upload/", {"files": list(files), **fields})


def sample_file(path=NORMAL_SAMPLE, name=None):
    return SimpleUploadedFile(name or path.name, path.read_bytes(), content_type="image/jpeg")


def good_png(name="good.png"):
    return SimpleUploadedFile(name, png_bytes(), content_type="image/png")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width=100_000, height=100_000) -> bytes:
    """A few hundred bytes declaring a 10-gigapixel 1-bit image."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(row * 10))
        + png_chunk(b"IEND", b"")
    )


def encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("L", (64, 64), 100).save(out, format=fmt)
    return out.getvalue()


def test_upload_page_has_multiple_file_input_and_csrf(staff_client):
    body = staff_client.get("/upload/").content.decode()
    assert 'type="file"' in body and "multiple" in body
    assert 'enctype="multipart/form-data"' in body
    assert "csrfmiddlewaretoken" in body
    assert 'id="drop-zone"' in body


def test_single_upload_stores_original_bytes_and_queues_a_prediction(
    staff_client,
    staff_user,
    model_version,
    media_dir,
):
    data = NORMAL_SAMPLE.read_bytes()
    response = upload(staff_client, sample_file(), reference="WARD-7 bed 3", note="cough")
    case = Case.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/cases/{case.pk}/"

    assert case.uploaded_by == staff_user
    assert (case.reference, case.note) == ("WARD-7 bed 3", "cough")
    assert case.original_filename == NORMAL_SAMPLE.name
    assert NORMAL_SAMPLE.stem not in case.original.name  # random path, never the user's name
    assert case.image_format == "JPEG" and (case.width, case.height) == (1260, 767)
    assert case.original.read() == data
    assert case.sha256 == hashlib.sha256(data).hexdigest()

    # A JPEG original is shown as JPEG (it was lossy already), close to the original.
    display = Image.open(case.display_image)
    assert display.format == "JPEG" and display.size == (1260, 767)
    assert case.display_image.name.endswith(".jpg")
    assert not display.info.get("exif")
    source = np.asarray(Image.open(NORMAL_SAMPLE).convert("L"), dtype=float)
    assert np.abs(np.asarray(display.convert("L"), dtype=float) - source).mean() < 1.5
    thumbnail = Image.open(case.thumbnail)
    assert max(thumbnail.size) == 160

    prediction = case.predictions.get()
    assert prediction.status == Prediction.Status.QUEUED
    assert prediction.model_version == model_version


def test_derived_images_drop_the_jpeg_comment(staff_client, model_version):
    """The original is kept as uploaded, but the copies the pages show carry no metadata."""
    film = Image.open(NORMAL_SAMPLE)
    out = io.BytesIO()
    film.save(out, format="JPEG", quality=95, comment=b"Patient: Jane Doe, MRN 123456")
    upload(staff_client, SimpleUploadedFile("c.jpeg", out.getvalue(), content_type="image/jpeg"))
    case = Case.objects.get()
    for derived in (case.display_image, case.thumbnail):
        image = Image.open(derived)
        assert image.format == "JPEG" and "comment" not in image.info
        assert b"Jane Doe" not in derived.open("rb").read()


def test_display_image_is_limited_to_1600_pixels(staff_client, model_version):
    big = SimpleUploadedFile("big.png", png_bytes(size=(3200, 2000)), content_type="image/png")
    upload(staff_client, big)
    case = Case.objects.get()
    assert (case.width, case.height) == (3200, 2000)
    display = Image.open(case.display_image)
    assert display.size == (1600, 1000)
    assert display.format == "PNG" and case.display_image.name.endswith(".png")  # lossless


def test_upload_sends_the_task_after_commit(
    staff_client,
    model_version,
    filesystem_broker,
    celery_app_broker,
    django_capture_on_commit_callbacks,
):
    celery_app_broker(filesystem_broker)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        upload(staff_client, sample_file())
    assert len(callbacks) == 1
    prediction = Prediction.objects.get()
    assert prediction.last_sent_at is not None
    messages = list(Path(filesystem_broker.transport_options["data_folder_out"]).iterdir())
    assert len(messages) == 1
    assert "diagnoses.tasks.run_prediction" in messages[0].read_text()


def test_several_files_redirect_to_history_with_a_summary(staff_client, model_version):
    response = upload(
        staff_client, sample_file(), sample_file(PNEUMONIA_SAMPLE), reference="batch-1"
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert Case.objects.filter(reference="batch-1").count() == 2
    assert Prediction.objects.filter(status=Prediction.Status.QUEUED).count() == 2
    page = staff_client.get("/").content.decode()
    assert "2 image(s) uploaded" in page


BAD_INPUTS = {
    "empty": ("empty.jpg", lambda: b"", "The file is empty."),
    "text renamed .jpg": ("notes.jpg", lambda: b"patient notes\n" * 20, "Unsupported file type"),
    "truncated JPEG": (
        "cut.jpg",
        lambda: NORMAL_SAMPLE.read_bytes()[:5000],
        "damaged or incomplete",
    ),
    "PNG bomb": ("bomb.png", png_bomb, "limit of 50,000,000 pixels"),
    "GIF": ("chest.gif", lambda: encoded("GIF"), "Unsupported file type"),
    "BMP": ("chest.bmp", lambda: encoded("BMP"), "Unsupported file type"),
    "DICOM without pixels": (
        "empty.dcm",
        lambda: dicom_bytes(with_pixels=False),
        "no pixel data",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_file_is_rejected_alone_and_the_batch_goes_on(
    staff_client,
    model_version,
    media_dir,
    kind,
):
    name, make, expected = BAD_INPUTS[kind]
    files_before = stored_files(media_dir)

    response = upload(staff_client, SimpleUploadedFile(name, make()))
    assert response.status_code == 200
    body = response.content.decode()
    assert f"{name}: " in body and expected in body
    assert not Case.objects.exists()
    assert stored_files(media_dir) == files_before

    response = upload(staff_client, SimpleUploadedFile(name, make()), good_png())
    case = Case.objects.get()
    assert response["Location"] == f"/cases/{case.pk}/"
    assert case.original_filename == "good.png"
    page = staff_client.get(response["Location"]).content.decode()
    assert f"{name}: " in page and expected in page
    assert len(stored_files(media_dir)) == len(files_before) + 3


def test_file_over_the_size_limit_is_rejected(
    staff_client,
    model_version,
    media_dir,
    settings,
):
    settings.PNEUMOSITE_MAX_UPLOAD_BYTES = 20_000
    files_before = stored_files(media_dir)
    response = upload(staff_client, sample_file(), good_png())
    assert Case.objects.get().original_filename == "good.png"
    page = staff_client.get(response["Location"]).content.decode()
    assert f"{NORMAL_SAMPLE.name}: The file is 75.0 KB, over the limit of 19.5 KB" in page
    assert len(stored_files(media_dir)) == len(files_before) + 3


def test_the_upload_page_states_the_limits(staff_client, model_version, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    body = staff_client.get("/upload/").content.decode()
    assert "Up to 3 files at once, each at most" in body
    assert 'data-max-files="3"' in body


def test_too_many_files_get_a_reason_and_store_nothing(
    staff_client, model_version, media_dir, settings
):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    before = stored_files(media_dir)
    files = [SimpleUploadedFile(f"x{i}.png", png_bytes()) for i in range(3)]
    response = staff_client.post("/upload/", {"files": files})
    assert response.status_code == 400
    assert "At most 2 files can be uploaded at once" in response.content.decode()
    assert not Case.objects.exists() and stored_files(media_dir) == before


def test_an_unknown_case_gets_the_site_not_found_page(staff_client):
    response = staff_client.get("/cases/999999/")
    assert response.status_code == 404
    assert "There is no such page or case" in response.content.decode()


def test_pixel_limit_comes_from_settings(staff_client, model_version, settings):
    settings.PNEUMOSITE_MAX_PIXELS = 100_000
    response = upload(staff_client, sample_file())
    assert "limit of 100,000 pixels" in response.content.decode()
    assert not Case.objects.exists()


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_is_accepted_and_stored_de_identified(
    staff_client,
    model_version,
    photometric,
):
    import pydicom

    data = dicom_bytes(photometric=photometric)
    assert b"Doe^Jane" in data
    upload(staff_client, SimpleUploadedFile("Doe_Jane.dcm", data, content_type="application/dicom"))
    case = Case.objects.get()
    assert case.image_format == "DICOM" and (case.width, case.height) == (1260, 767)
    assert case.original_filename == ""  # PACS exports are often named after the patient
    assert "Doe_Jane" not in staff_client.get(f"/cases/{case.pk}/").content.decode()

    stored = case.original.read()
    for identifying in (
        b"Doe^Jane",
        b"MRN-123456",
        b"19800101",
        b"General Hospital",
        b"House^Gregory",
        b"Radiographer^Rita",
        b"Maiden^Jane",
        b"20240229",
        b"bed 12",
        b"private vendor data",
    ):
        assert identifying not in stored, identifying
    dataset = pydicom.dcmread(io.BytesIO(stored))
    source = pydicom.dcmread(io.BytesIO(data))
    assert {element.keyword for element in dataset} <= KEPT_OR_BLANKED_DICOM_KEYWORDS
    assert not any(element.VR == "PN" and element.value for element in dataset.iterall())
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert dataset[keyword].value != source[keyword].value
    assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert dataset.PatientIdentityRemoved == "YES"
    assert case.sha256 == hashlib.sha256(stored).hexdigest()

    # MONOCHROME1 is inverted back: the display image looks like the source radiograph.
    source = np.asarray(Image.open(NORMAL_SAMPLE).convert("L"), dtype=float)
    display = Image.open(case.display_image)
    assert display.format == "PNG"  # a DICOM is shown losslessly
    assert np.abs(source - np.asarray(display.convert("L"), dtype=float)).mean() < 2


def test_dicom_lookup_tables_survive_de_identification_without_their_text():
    import pydicom
    from pydicom.dataset import Dataset

    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(max_side=300)))
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 8]
    lut.add_new("LUTData", "US", [min(value // 8, 255) for value in range(4096)])
    lut.LUTExplanation = "Preset of Dr Jane Smith"
    dataset.VOILUTSequence = [lut]
    dataset.WindowCenterWidthExplanation = "Preset of Dr Jane Smith"
    source = io.BytesIO()
    dataset.save_as(source, enforce_file_format=True)

    kept = deidentify_dicom(source.getvalue())

    assert b"Jane Smith" not in kept
    assert pydicom.dcmread(io.BytesIO(kept)).VOILUTSequence[0].LUTDescriptor == [4096, 0, 8]
    assert np.array_equal(
        np.asarray(decode_image(kept, max_pixels=10**7)),
        np.asarray(decode_image(source.getvalue(), max_pixels=10**7)),
    )


def test_upload_without_active_model_stores_nothing(staff_client, media_dir):
    response = upload(staff_client, sample_file())
    assert response.status_code == 200
    assert "No model version is active" in response.content.decode()
    assert not Case.objects.exists()
    assert stored_files(media_dir) == []


def test_upload_succeeds_when_the_broker_is_down(
    staff_client,
    model_version,
    celery_app_broker,
    django_capture_on_commit_callbacks,
):
    from conftest import BrokerConfig

    celery_app_broker(BrokerConfig(url="redis://127.0.0.1:1/0"))
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(staff_client, sample_file())
    case = Case.objects.get()
    assert response["Location"] == f"/cases/{case.pk}/"
    prediction = case.predictions.get()
    assert prediction.status == Prediction.Status.QUEUED and prediction.last_sent_at is None


def test_a_request_larger_than_any_batch_is_refused_unread(staff_client, active_model, settings):
    settings.PNEUMOSITE_MAX_REQUEST_BYTES = 50_000
    big = SimpleUploadedFile("big.jpg", b"\xff\xd8\xff" + b"0" * 60_000, content_type="image/jpeg")
    response = staff_client.post("/upload/", {"files": [big]})
    assert response.status_code == 413
    assert "Send fewer files" in response.content.decode()
    assert not Case.objects.exists()
