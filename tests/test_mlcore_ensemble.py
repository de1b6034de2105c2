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

SIZE = 128
TRAINED_SIZE = 64  # the members trained on real films: small, so the fixture is quick


def randomise(model: keras.Model, rng: np.random.Generator) -> keras.Model:
    """Weights unlike a fresh network's (BN statistics, biases), so copying them matters."""
    for layer in model.layers:
        if layer.weights and layer.name != "augment":
            layer.set_weights(
                [np.abs(rng.normal(0.5, 0.2, w.shape)) + 0.1 for w in layer.get_weights()]
                if isinstance(layer, keras.layers.BatchNormalization)
                else [rng.normal(0.0, 0.1, w.shape) for w in layer.get_weights()]
            )
    return model


@pytest.fixture(scope="module")
def members():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    return [randomise(build_model(SIZE, width=w, seed=0), rng) for w in (16, 24)]


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
    image = pixels[0].astype(np.uint8)
    for silent, speaking in ((0, 1), (1, 0)):
        # A member whose score ignores its features adds no heat: the map is the other's.
        dense = ensemble.get_layer(f"m{silent}_pneumonia")
        kernel, bias = dense.get_weights()
        dense.set_weights([np.zeros_like(kernel), bias])
        expected = GradCam(members[speaking])(image)
        assert expected.max() == pytest.approx(1.0)
        assert np.allclose(GradCam(ensemble)(image), expected, atol=1e-4)
        dense.set_weights([kernel, bias])


def test_ensembles_of_ensembles_and_mixed_sizes_are_refused(members, tmp_path):
    with pytest.raises(ValueError, match="not ensembles"):
        build_ensemble([build_ensemble(members), members[0]])
    with pytest.raises(ValueError, match="sizes"):
        build_ensemble([members[0], build_model(SIZE // 2, width=16)])
    with pytest.raises(ValueError, match="two members"):
        ensemble_models([tmp_path], DATASET, tmp_path / "e")


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
            image_size=TRAINED_SIZE,
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


def test_members_beside_different_carves_are_refused(trained_members, tmp_path):
    report_file = trained_members[1] / "train_metrics.json"
    original = report_file.read_text()
    report = json.loads(original)
    report["config"]["split_seed"] += 1
    report_file.write_text(json.dumps(report))
    try:
        with pytest.raises(ValueError, match="carve seed"):
            ensemble_models(trained_members, DATASET, tmp_path / "e")
    finally:
        report_file.write_text(original)


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
        image_size=TRAINED_SIZE,
        limit_per_class=12,
        init_model=tmp_path / "ensemble",
    )
    train(config, log=lambda _: None)
    tuned = Predictor.load(config.out)
    assert explained_layer_names(tuned.model) == ["m0_stage4_out", "m1_stage4_out"]
    assert "augment" in [layer.name for layer in tuned.model.layers]
    with pytest.raises(ValueError, match="not ensembles"):
        ensemble_models([config.out, trained_members[0]], DATASET, tmp_path / "nested")
    with pytest.raises(ValueError, match="one of the members"):
        ensemble_models(trained_members, DATASET, trained_members[0])
