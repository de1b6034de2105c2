"""Preprocessing options: CLAHE, cropping to the body, and their record in model.json."""

import dataclasses
import io

import keras
import numpy as np
import pytest
from mlcore_support import sample_files
from PIL import Image, ImageDraw

from mlcore.framing import body_share, is_unusually_framed
from mlcore.inference import Predictor
from mlcore.model import build_model
from mlcore.preprocess import (
    DETAIL_BANDS,
    DETAIL_GAIN_RANGE,
    DETAIL_LEVEL,
    Preprocessing,
    band_amounts,
    body_box,
    clahe,
    detail_amount,
    gaussian_blur,
    gaussian_taps,
    normalize_detail,
    preprocess_image,
    scale_box,
)
from mlcore.serialization import ModelMetadata, save_model_dir


def film_with_margins() -> Image.Image:
    """A grey 'patient' in the middle of a black film, with a bright side marker."""
    film = Image.new("L", (400, 300), 0)
    draw = ImageDraw.Draw(film)
    draw.rectangle((100, 40, 299, 259), fill=170)  # the body: columns 100-299, rows 40-259
    draw.ellipse((160, 80, 200, 220), fill=60)  # a dark lung inside it
    draw.rectangle((10, 10, 25, 30), fill=255)  # an "R" marker in the margin
    return film


def test_body_box_bounds_the_patient_and_ignores_markers():
    left, top, right, bottom = body_box(film_with_margins())
    assert 85 <= left <= 100 and 290 <= right <= 315
    assert 30 <= top <= 40 and 259 <= bottom <= 275


@pytest.mark.parametrize(
    "film",
    [Image.new("L", (300, 300), 0), Image.new("L", (300, 300), 255), Image.new("L", (8, 8), 90)],
    ids=["black", "white", "tiny"],
)
def test_body_box_keeps_the_whole_film_when_there_is_no_body(film):
    assert body_box(film) is None
    assert preprocess_image(film, crop_to_body=True).shape == (224, 224, 1)


def test_crop_to_body_removes_the_margins_effect():
    film = film_with_margins()
    tighter = film.crop((80, 20, 320, 280))  # the same patient with less margin

    def change(preprocessing: Preprocessing) -> float:
        return np.abs(preprocessing(film).astype(int) - preprocessing(tighter).astype(int)).mean()

    assert change(Preprocessing(crop_to_body=True)) < change(Preprocessing()) / 4


def test_clahe_raises_local_contrast_within_its_limit_and_keeps_flat_films_flat():
    texture = np.random.default_rng(0).integers(100, 141, (224, 224)).astype(np.uint8)
    out = clahe(texture)
    assert out.dtype == np.uint8 and out.shape == texture.shape
    assert 1.8 * texture.std() < out.std() < 4 * texture.std()  # the clip limit caps the gain
    assert len(np.unique(clahe(np.full((64, 64), 77, np.uint8)))) == 1


def test_clahe_blends_tiles_without_seams():
    ramp = np.tile(np.linspace(0, 255, 224).astype(np.uint8), (224, 1))
    assert np.all(np.diff(clahe(ramp).astype(int), axis=1) >= 0)


def test_gaussian_blur_keeps_flat_films_and_the_mean_and_smooths_noise():
    flat = np.full((40, 50), 77.0, np.float32)
    assert np.allclose(gaussian_blur(flat, 1.5), 77.0)
    noise = np.random.default_rng(0).normal(128, 20, (224, 224)).astype(np.float32)
    blurred = gaussian_blur(noise, 1.5)
    assert blurred.shape == noise.shape
    assert abs(blurred.mean() - noise.mean()) < 0.5
    assert blurred.std() < noise.std() / 3


@pytest.mark.parametrize(
    "shape, sigma",
    [((224, 224), 6.0), ((40, 50), 1.5), ((9, 5), 3.0), ((2, 3), 6.0), ((1, 7), 1.5)],
)
def test_gaussian_blur_is_a_mirrored_convolution_with_the_taps(shape, sigma):
    """The matrix form against the plain definition, taps longer than the film included."""
    film = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
    taps = gaussian_taps(sigma).astype(np.float64)
    radius = taps.size // 2
    expected = film.astype(np.float64)
    for axis in (0, 1):
        expected = np.apply_along_axis(
            lambda line: np.convolve(np.pad(line, radius, "reflect"), taps, "valid"),
            axis,
            expected,
        )
    assert np.abs(gaussian_blur(film, sigma) - expected).max() < 1e-3


def test_normalize_detail_gives_a_soft_and_a_sharp_copy_of_a_film_the_same_detail():
    film = np.asarray(Preprocessing()(sample_files()[0].read_bytes()))[..., 0]
    soft = np.rint(gaussian_blur(film.astype(np.float32), 0.8)).astype(np.uint8)
    assert detail_amount(soft) < 0.7 * detail_amount(film)
    a, b = detail_amount(normalize_detail(film)), detail_amount(normalize_detail(soft))
    assert abs(a - DETAIL_LEVEL) < 0.1 and abs(b - DETAIL_LEVEL) < 0.1
    # Only the detail is scaled: the coarse picture stays where it was.
    smooth = gaussian_blur(normalize_detail(film).astype(np.float32), 3.0)
    assert np.abs(smooth - gaussian_blur(film.astype(np.float32), 3.0)).mean() < 2.0


def test_normalize_detail_levels_every_band_it_is_given():
    def amounts(film):
        return np.array(band_amounts(film))

    film = np.asarray(Preprocessing(crop_to_body=True)(sample_files()[0].read_bytes()))[..., 0]
    coarse = gaussian_blur(film.astype(np.float32), 12.0)
    soft = np.rint(coarse + 0.6 * (film - coarse)).astype(np.uint8)  # every band at 0.6x
    levels = np.array([level for _, level in DETAIL_BANDS])
    assert np.all(amounts(soft) < 0.7 * amounts(film))
    for copy in (film, soft):
        # Within 10%: the bands overlap, and rounding and clipping to 0-255 move them a little.
        leveled = amounts(normalize_detail(copy, DETAIL_BANDS))
        assert np.all(np.abs(leveled - levels) < 0.1 * levels)
    # One band leaves the coarser ones as the film has them.
    assert amounts(normalize_detail(film))[2] > levels[2] + 1.5
    gap = np.abs(
        amounts(normalize_detail(film, DETAIL_BANDS))
        - amounts(normalize_detail(soft, DETAIL_BANDS))
    )
    assert np.all(gap < 0.5)


def test_normalize_detail_limits_the_gain_and_keeps_flat_films_flat():
    faint = np.random.default_rng(0).normal(128, 0.6, (224, 224)).round().astype(np.uint8)
    gain = np.std(normalize_detail(faint).astype(float)) / np.std(faint.astype(float))
    assert gain <= DETAIL_GAIN_RANGE[1] * 1.05
    flat = np.full((64, 64), 77, np.uint8)
    assert np.array_equal(normalize_detail(flat), flat)


@pytest.mark.parametrize("bands", [1, 3])
def test_preprocessing_with_normalize_detail_is_served_as_trained(tmp_path, bands):
    preprocessing = Preprocessing(
        size=64, crop_to_body=True, normalize_detail=True, detail_bands=bands
    )
    ModelMetadata("v1", 0.4, preprocessing).write(tmp_path)
    assert ModelMetadata.read(tmp_path).preprocessing == preprocessing
    blob = sample_files()[0].read_bytes()
    assert not np.array_equal(preprocessing(blob), Preprocessing(64, crop_to_body=True)(blob))
    other_bands = len(DETAIL_BANDS) if bands == 1 else 1
    other = Preprocessing(64, crop_to_body=True, normalize_detail=True, detail_bands=other_bands)
    assert not np.array_equal(preprocessing(blob), other(blob))


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="unknown normalization"):
        preprocess_image(Image.new("L", (64, 64)), normalization="gamma")


def test_model_json_records_the_preprocessing_and_old_files_read_as_defaults(tmp_path):
    preprocessing = Preprocessing(size=96, normalization="clahe", crop_to_body=True)
    ModelMetadata("v1", 0.4, preprocessing).write(tmp_path)
    assert ModelMetadata.read(tmp_path).preprocessing == preprocessing
    (tmp_path / "model.json").write_text('{"version": "v0", "threshold": 0.5, "image_size": 224}')
    assert ModelMetadata.read(tmp_path).preprocessing == Preprocessing()


def test_preprocessing_settings_name_every_field_and_round_trip():
    names = [field.name for field in dataclasses.fields(Preprocessing)]
    assert names == ["size", *Preprocessing.SETTING_NAMES[1:]]
    preprocessing = Preprocessing(96, "clahe", True, True, 2)
    assert Preprocessing.from_settings(preprocessing.as_settings()) == preprocessing
    assert Preprocessing.from_settings({"image_size": 128}) == Preprocessing(128)
    with pytest.raises(KeyError):
        Preprocessing.from_settings({"normalization": "clahe"})


def test_predictor_serves_with_the_preprocessing_the_model_was_trained_with(tmp_path):
    preprocessing = Preprocessing(size=64, normalization="clahe", crop_to_body=True)
    model = build_model(64, width=16, augment=False, seed=0)
    save_model_dir(model, tmp_path, ModelMetadata("tiny", 0.5, preprocessing))
    predictor = Predictor.load(tmp_path)
    blob = sample_files()[0].read_bytes()
    assert np.array_equal(predictor.preprocess(blob), preprocessing(blob))
    assert not np.array_equal(predictor.preprocess(blob), Preprocessing(size=64)(blob))
    expected = model.predict(preprocessing(blob)[np.newaxis].astype(np.float32), verbose=0)
    assert abs(predictor.predict(blob).probability - float(expected[0, 0])) < 1e-4


def test_body_share_flags_films_framed_unlike_the_training_data():
    assert is_unusually_framed(body_share(film_with_margins()))
    assert body_share(Image.new("L", (300, 300), 0)) == 1.0
    for path in sample_files():
        assert not is_unusually_framed(body_share(Image.open(path))), path.name


def test_a_film_padded_to_twice_its_size_is_still_flagged():
    film = Image.open(sample_files()[0]).convert("L")
    padded = Image.new("L", (film.width * 2, film.height * 2), 0)
    padded.paste(film, (film.width // 2, film.height // 2))
    assert body_share(padded) < 0.3


@pytest.mark.parametrize(
    "raw",
    [
        {"normalization": "CLAHE"},
        {"crop_to_body": "false"},
        {"normalize_detail": 1},
        {"detail_bands": 0},
        {"detail_bands": len(DETAIL_BANDS) + 1},
        {"detail_bands": True},
        {"detail_bands": 2.0},
        {"detail_bands": 2},  # without normalize_detail
        {"image_size": "224"},
    ],
    ids=[
        "normalization",
        "crop",
        "detail",
        "no-bands",
        "too-many-bands",
        "bool-bands",
        "float-bands",
        "bands-without-detail",
        "size",
    ],
)
def test_model_json_with_bad_preprocessing_values_is_refused(raw):
    with pytest.raises(ValueError):
        ModelMetadata.from_dict({"version": "v", "threshold": 0.5, "image_size": 224, **raw})


def test_heatmap_of_a_cropping_model_stays_on_the_patient(tmp_path):
    preprocessing = Preprocessing(size=64, crop_to_body=True)
    # Fixed initial weights: for some random ones Grad-CAM is zero everywhere (no heat at
    # all), which would make this test depend on what ran before it.
    keras.utils.set_random_seed(0)
    save_model_dir(
        build_model(64, width=16, augment=False, seed=0),
        tmp_path,
        ModelMetadata("tiny", 0.5, preprocessing),
    )
    film = film_with_margins()
    _, png = Predictor.load(tmp_path).predict_with_heatmap(film)
    overlay = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    box = preprocessing.with_box(film)[1]  # in the pixels of the film at the dataset's scale
    left, top, right, bottom = scale_box(box, preprocessing.source_film(film).size, film.size)
    assert np.allclose((left, top, right, bottom), body_box(film), atol=3)
    outside = np.ones(overlay.shape[:2], bool)
    outside[top:bottom, left:right] = False
    grey = (overlay[..., 0] == overlay[..., 1]) & (overlay[..., 1] == overlay[..., 2])
    assert grey[outside].all()  # no heat drawn in the margins
    assert not grey[~outside].all()


def test_a_box_is_scaled_with_its_image_and_keeps_at_least_a_pixel():
    assert scale_box((10, 20, 30, 40), (100, 200), (50, 100)) == (5, 10, 15, 20)
    assert scale_box((10, 20, 30, 40), (100, 200), (100, 200)) == (10, 20, 30, 40)
    assert scale_box((10, 20, 11, 21), (1000, 1000), (100, 100)) == (1, 2, 2, 3)


def test_fine_tuning_refuses_other_preprocessing_than_the_base_model(tmp_path):
    from mlcore.train import TrainConfig, train

    ModelMetadata("base", 0.5, Preprocessing(crop_to_body=True)).write(tmp_path)
    config = TrainConfig(data=tmp_path, out=tmp_path / "out", init_model=tmp_path)
    with pytest.raises(ValueError, match="same options"):
        train(config)
