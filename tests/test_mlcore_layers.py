"""Custom augmentation layers: they change what they promise, only in training, and save."""

import keras
import numpy as np
import pytest

from mlcore.fastpath import lite_forward_or_none
from mlcore.layers import RandomCentreBrightness, RandomDetailGain
from mlcore.model import build_model

SIZE = 64


def test_it_changes_the_centre_more_than_the_corners_and_stays_in_range():
    images = np.full((32, SIZE, SIZE, 1), 0.5, np.float32)
    out = np.asarray(RandomCentreBrightness(0.2, seed=0)(images, training=True))
    change = np.abs(out - images)
    assert change[:, SIZE // 2, SIZE // 2].mean() > 0.05
    assert change[:, SIZE // 2, SIZE // 2].mean() > 5 * change[:, 0, 0].mean()
    assert (out[:, SIZE // 2, SIZE // 2] > 0.5).any() and (out[:, SIZE // 2, SIZE // 2] < 0.5).any()
    saturated = np.asarray(RandomCentreBrightness(0.9, seed=0)(images * 2, training=True))
    assert saturated.min() >= 0.0 and saturated.max() <= 1.0


def test_it_is_the_identity_at_inference():
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype(np.float32)
    assert np.array_equal(RandomCentreBrightness(0.2)(images, training=False), images)


def test_a_model_using_it_saves_loads_and_takes_the_fast_path(tmp_path):
    model = build_model(SIZE, width=16, seed=0, centre_brightness=0.05)
    assert any(
        isinstance(layer, RandomCentreBrightness) for layer in model.get_layer("augment").layers
    )
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    pixels = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 1)).astype(np.float32)
    expected = np.asarray(model(pixels, training=False))
    assert np.allclose(reloaded(pixels, training=False), expected, atol=1e-6)
    assert lite_forward_or_none(reloaded) is not None


def test_detail_gain_softens_some_films_sharpens_others_and_keeps_the_coarse_picture():
    rng = np.random.default_rng(0)
    coarse = np.linspace(0.2, 0.8, SIZE, dtype=np.float32)[None, :, None, None]
    images = np.clip(coarse + 0.05 * rng.standard_normal((32, SIZE, SIZE, 1)), 0, 1)
    images = images.astype(np.float32)
    out = np.asarray(RandomDetailGain(2.0, seed=0)(images, training=True))
    assert out.min() >= 0.0 and out.max() <= 1.0
    fine_ratio = np.array(
        [
            np.std(np.diff(o[..., 0], axis=1)) / np.std(np.diff(i[..., 0], axis=1))
            for o, i in zip(out, images, strict=True)
        ]
    )
    assert fine_ratio.min() < 0.8 and fine_ratio.max() > 1.25
    assert 0.45 < fine_ratio.min() and fine_ratio.max() < 2.2  # within the gain's range
    row_means = out[..., 0].mean(axis=(0, 2))
    assert np.allclose(row_means, coarse[0, :, 0, 0], atol=0.02)


def test_detail_gain_refuses_a_gain_that_cannot_soften_and_sharpen():
    with pytest.raises(ValueError, match="max_gain"):
        RandomDetailGain(0.8)


def test_detail_gain_is_the_identity_at_inference_and_saves(tmp_path):
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype(np.float32)
    assert np.array_equal(RandomDetailGain(2.0)(images, training=False), images)
    model = build_model(SIZE, width=16, seed=0, detail_gain=1.5)
    layer = next(
        layer for layer in model.get_layer("augment").layers if isinstance(layer, RandomDetailGain)
    )
    assert layer.max_gain == 1.5
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    pixels = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 1)).astype(np.float32)
    assert np.allclose(reloaded(pixels, training=False), model(pixels, training=False), atol=1e-6)
