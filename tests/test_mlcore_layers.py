"""RandomCentreBrightness: changes the middle of the film, not its edges, and only in training."""

import keras
import numpy as np

from mlcore.fastpath import lite_forward_or_none
from mlcore.layers import RandomCentreBrightness
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
