"""An ensemble is one Keras graph that averages its members: served, explained and saved as one."""

import dataclasses
import json

import keras
import numpy as np
import pytest
from conftest import require_service
from mlcore_support import DATASET, sample_files

from mlcore.ensemble import ensemble_models
from mlcore.explain import GradCam
from mlcore.fastpath import lite_forward_or_none
from mlcore.inference import Predictor
from mlcore.model import build_ensemble, build_model, explained_layer_names
from mlcore.serialization import ModelMetadata
from mlcore.train import TrainConfig, train

SIZE = 64


@pytest.fixture(scope="module")
def members():
    keras.backend.clear_session()
    return [build_model(SIZE, width=16, seed=seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 1)).astype(np.float32)


def member_mean(members, pixels):
    return np.mean([np.asarray(m(pixels, training=False)) for m in members], axis=0)


def test_ensemble_output_is_the_mean_of_its_members(members, pixels):
    ensemble = build_ensemble(members)
    assert np.allclose(ensemble(pixels, training=False), member_mean(members, pixels), atol=1e-6)
    assert ensemble.count_params() == sum(m.count_params() for m in members)


def test_ensemble_saves_loads_and_takes_the_fast_path(members, pixels, tmp_path):
    build_ensemble(members).save(tmp_path / "e.keras")
    reloaded = keras.models.load_model(tmp_path / "e.keras", compile=False)
    expected = member_mean(members, pixels)
    assert np.allclose(reloaded(pixels, training=False), expected, atol=1e-6)
    lite = lite_forward_or_none(reloaded)
    assert lite is not None
    assert np.abs(lite(pixels[:1]) - expected[:1]).max() < 1e-4


def test_gradcam_explains_every_member(members, pixels):
    ensemble = build_ensemble(members)
    assert explained_layer_names(ensemble) == ["m0_stage4_out", "m1_stage4_out"]
    assert explained_layer_names(members[0]) == ["stage4_out"]
    cam = GradCam(ensemble)(pixels[0].astype(np.uint8))
    assert cam.shape == (SIZE // 32, SIZE // 32)
    assert 0.0 <= cam.min() and cam.max() <= 1.0


@pytest.fixture(scope="module")
def trained_members(tmp_path_factory):
    require_service("dataset", DATASET.is_dir(), f"{DATASET} (Kermany et al. 2018) is absent")
    keras.backend.clear_session()
    root = tmp_path_factory.mktemp("members")
    dirs = []
    for seed in (0, 1):
        config = TrainConfig(
            data=DATASET,
            out=root / f"s{seed}",
            epochs=1,
            batch_size=16,
            image_size=SIZE,
            limit_per_class=12,
            width=16,
            seed=seed,
        )
        train(config, log=lambda _: None)
        dirs.append(config.out)
    return dirs


def test_ensemble_cli_output_is_served_like_any_model(trained_members, tmp_path):
    out = tmp_path / "ensemble"
    report = ensemble_models(trained_members, DATASET, out, version="ens-test")
    predictor = Predictor.load(out)
    assert predictor.version == "ens-test"
    assert predictor.threshold == pytest.approx(report["metrics"]["threshold"])
    assert report["config"]["ensemble_members"] == ["s0", "s1"]
    assert json.loads((out / "train_metrics.json").read_text())["config"]["seed"] == [0, 1]

    singles = [Predictor.load(d) for d in trained_members]
    film = sample_files()[0].read_bytes()
    expected = np.mean([p.predict(film).probability for p in singles])
    assert predictor.predict(film).probability == pytest.approx(expected, abs=1e-5)


def test_members_with_different_preprocessing_are_refused(trained_members, tmp_path):
    metadata = ModelMetadata.read(trained_members[1])
    cropped = dataclasses.replace(
        metadata, preprocessing=dataclasses.replace(metadata.preprocessing, crop_to_body=True)
    )
    cropped.write(trained_members[1])
    try:
        with pytest.raises(ValueError, match="preprocessing"):
            ensemble_models(trained_members, DATASET, tmp_path / "e")
    finally:
        metadata.write(trained_members[1])
    assert not (tmp_path / "e").exists()


def test_an_ensemble_can_be_fine_tuned_like_a_single_model(trained_members, tmp_path):
    """The retraining job fine-tunes the active model, which may be an ensemble."""
    ensemble_models(trained_members, DATASET, tmp_path / "ensemble")
    config = TrainConfig(
        data=DATASET,
        out=tmp_path / "tuned",
        epochs=1,
        batch_size=16,
        image_size=SIZE,
        limit_per_class=12,
        init_model=tmp_path / "ensemble",
    )
    train(config, log=lambda _: None)
    tuned = Predictor.load(config.out)
    assert explained_layer_names(tuned.model) == ["m0_stage4_out", "m1_stage4_out"]
    assert "augment" in [layer.name for layer in tuned.model.layers]
    with pytest.raises(ValueError, match="not ensembles"):
        ensemble_models([config.out, trained_members[0]], DATASET, tmp_path / "nested")


def test_max_zoom_in_sets_how_far_augmentation_magnifies():
    zoom = next(
        layer
        for layer in build_model(SIZE, width=16, max_zoom_in=0.3).get_layer("augment").layers
        if isinstance(layer, keras.layers.RandomZoom)
    )
    assert zoom.height_factor == (-0.3, 0.15) and zoom.width_factor is None
