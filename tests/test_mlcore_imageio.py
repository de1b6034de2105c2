"""Decoding and preprocessing: every odd input gives a clear error or a defined result."""

import io

import numpy as np
import pydicom
import pytest
from mlcore_support import SAMPLES, encode
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from mlcore.imageio import (
    ImageDecodeError,
    _request_reduced_scale,
    decode_image,
    shrink_to_shorter_side,
    sniff_format,
)
from mlcore.preprocess import DATASET_SHORTER_SIDE, IMAGE_SIZE, Preprocessing, preprocess_image


def gradient(width=300, height=200) -> Image.Image:
    values = np.add.outer(np.arange(height), np.arange(width)) % 256
    return Image.fromarray(values.astype(np.uint8), mode="L")


def make_dicom(pixels: np.ndarray, photometric="MONOCHROME2", with_pixels=True) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.Modality = "CR"
    if with_pixels:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_sniff_format_reads_content_not_names():
    assert sniff_format(encode(gradient(), "JPEG")) == "JPEG"
    assert sniff_format(encode(gradient(), "PNG")) == "PNG"
    assert sniff_format(b"hello, this is text") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all, just text renamed .jpg", "Unsupported file type"),
        (encode(gradient(), "GIF"), "Unsupported file type"),
        (encode(gradient(), "BMP"), "Unsupported file type"),
        (encode(gradient(), "JPEG")[:400], "damaged or incomplete"),
        (encode(Image.new("L", (1, 1)), "PNG"), "too small"),
    ],
    ids=["empty", "text", "gif", "bmp", "truncated-jpeg", "1x1"],
)
def test_bad_inputs_raise_a_clear_message(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_pixel_limit_is_checked_before_decoding():
    huge = encode(Image.new("1", (12_000, 10_000)), "PNG")  # 120 Mpx in a few kB
    assert len(huge) < 100_000
    with pytest.raises(ImageDecodeError, match="limit of 50,000,000 pixels"):
        decode_image(huge, max_pixels=50_000_000)


def test_all_black_image_has_a_defined_result():
    pixels = preprocess_image(encode(Image.new("L", (400, 300)), "PNG"))
    assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 1) and pixels.dtype == np.uint8


def test_sixteen_bit_png_is_stretched_to_eight_bits():
    values = (np.arange(200 * 300).reshape(200, 300) % 4096).astype(np.uint16)
    png = encode(Image.fromarray(values), "PNG")
    image = decode_image(png)
    assert image.mode == "L"
    assert np.asarray(image).max() == 255 and np.asarray(image).min() == 0


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    jpeg = encode(gradient(300, 200), "JPEG", exif=exif.tobytes())
    assert decode_image(jpeg).size == (200, 300)


def test_rgba_and_palette_images_become_grayscale():
    rgba = Image.new("RGBA", (64, 64), (200, 100, 50, 128))
    assert decode_image(encode(rgba, "PNG")).mode == "L"
    assert decode_image(encode(gradient().convert("P"), "PNG")).mode == "L"


def test_dicom_monochrome1_is_inverted():
    pixels = np.tile(np.linspace(0, 4000, 256), (128, 1))
    normal = np.asarray(decode_image(make_dicom(pixels, "MONOCHROME2")))
    inverted = np.asarray(decode_image(make_dicom(pixels, "MONOCHROME1")))
    assert normal[0, 0] < normal[0, -1]
    assert np.array_equal(inverted, 255 - normal)


def test_dicom_without_pixel_data_is_rejected():
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        decode_image(make_dicom(np.zeros((4, 4)), with_pixels=False))


def test_full_size_sample_decodes_as_stored():
    path = SAMPLES / "NORMAL" / "IM-0001-0001.jpeg"
    image = decode_image(path.read_bytes())
    assert image.size == (1857, 1317) and image.mode == "L"


def test_a_full_size_jpeg_decodes_at_the_datasets_scale_close_to_a_whole_decode():
    data = (SAMPLES / "NORMAL" / "IM-0001-0001.jpeg").read_bytes()
    reduced = decode_image(data, shorter_side=256)
    whole = shrink_to_shorter_side(decode_image(data), 256)
    assert reduced.size == whole.size == (361, 256) and reduced.mode == "L"
    difference = np.abs(np.asarray(reduced, np.float32) - np.asarray(whole, np.float32))
    # The dataset's own JPEG re-encoding differs from `whole` by 1.3 grey levels on average
    # (training/dataset_scale.py).
    assert difference.mean() < 1.0


def test_only_a_large_unrotated_jpeg_is_decoded_at_a_reduced_scale():
    image = Image.open(SAMPLES / "NORMAL" / "IM-0001-0001.jpeg")  # 1857x1317
    assert _request_reduced_scale(image, 256) == (0, 0, 1857 / 4, 1317 / 4)
    image.load()
    assert image.size == (465, 330)  # libjpeg rounds a reduced side up
    small = Image.open(io.BytesIO(encode(gradient(600, 500), "JPEG")))
    assert _request_reduced_scale(small, 256) is None
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees to show
    rotated = Image.open(io.BytesIO(encode(gradient(1200, 800), "JPEG", exif=exif)))
    assert _request_reduced_scale(rotated, 256) is None


def test_a_rotated_jpeg_is_turned_then_shrunk():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(gradient(1200, 800), "JPEG", exif=exif)
    assert decode_image(data).size == (800, 1200)
    assert decode_image(data, shorter_side=256).size == (256, 384)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "DICOM"])
def test_a_film_is_shrunk_to_the_shorter_side_only_when_larger(fmt):
    def data(width, height):
        if fmt == "DICOM":
            return make_dicom(np.asarray(gradient(width, height), np.float64) * 16)
        return encode(gradient(width, height), fmt)

    assert decode_image(data(900, 600), shorter_side=256).size == (384, 256)
    assert decode_image(data(600, 900), shorter_side=256).size == (256, 384)
    small = data(300, 256)
    assert np.array_equal(
        np.asarray(decode_image(small, shorter_side=256)), np.asarray(decode_image(small))
    )


def test_preprocessing_shrinks_a_film_no_further_than_its_input_size():
    film = gradient(1200, 900)
    assert min(Preprocessing().source_film(film).size) == DATASET_SHORTER_SIDE
    assert min(Preprocessing(size=320).source_film(film).size) == 320
    assert Preprocessing().source_film(encode(film, "PNG")).size == (341, 256)


def test_dicom_pixel_limit_counts_every_frame():
    pixels = np.zeros((100, 100))
    data = make_dicom(pixels)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.NumberOfFrames = 3
    dataset.PixelData = np.zeros((3, 100, 100), np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="3 frame"):
        decode_image(buffer.getvalue(), max_pixels=20_000)


def test_deflated_dicom_is_refused_before_inflating():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((64, 64)))))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="Deflated"):
        decode_image(buffer.getvalue())
