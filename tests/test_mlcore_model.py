"""The shipped model, the fast path, Grad-CAM and a short real training run."""

import io
import json

import keras
import numpy as np
import pytest
from conftest import require_service
from mlcore_support import DATASET, encode, sample_files, shipped_model_dir
from PIL import Image

from mlcore import data as datasets
from mlcore.evaluate import evaluate
from mlcore.inference import Predictor
from mlcore.preprocess import DATASET_SHORTER_SIDE, preprocess_image
from mlcore.train import TrainConfig, train

READINGS_FILE = "sample_readings.json"


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(shipped_model_dir())


@pytest.fixture(scope="module")
def dataset_root():
    require_service("dataset", DATASET.is_dir(), f"{DATASET} (Kermany et al. 2018) is absent")
    return DATASET


def test_training_and_serving_preprocess_identically(predictor):
    samples = [datasets.Sample(path, 0) for path in sample_files()]
    cached, _ = datasets.load_arrays(samples, predictor.preprocessing)
    served = np.stack([predictor.preprocess(s.path.read_bytes()) for s in samples])
    assert np.array_equal(cached, served)
    readings = predictor.predict_batch([s.path.read_bytes() for s in samples])
    probabilities = predictor.probabilities(cached)
    assert np.allclose([r.probability for r in readings], probabilities, atol=1e-6)


def test_fast_path_matches_keras_predict(predictor):
    pixels = np.stack([predictor.preprocess(p.read_bytes()) for p in sample_files()])
    reference = predictor.model.predict(pixels.astype(np.float32), verbose=0).ravel()
    fast = [predictor.predict(p.read_bytes()).probability for p in sample_files()]
    assert np.max(np.abs(np.array(fast) - reference)) < 1e-4


def test_sample_readings_match_the_recorded_ones(predictor):
    """Regression: the shipped model's readings of the 12 full-size samples."""
    recorded = json.loads((shipped_model_dir() / READINGS_FILE).read_text())
    assert recorded["model_version"] == predictor.version
    assert len(recorded["readings"]) == len(sample_files()) == 12
    for path in sample_files():
        reading = predictor.predict(path.read_bytes())
        expected = recorded["readings"][path.name]
        assert reading.label == expected["label"], path.name
        assert abs(reading.probability - expected["probability"]) < 1e-3, path.name


def test_no_file_of_the_dataset_is_larger_than_the_datasets_scale(dataset_root):
    """Larger films are shrunk to DATASET_SHORTER_SIDE before preprocessing; that must leave
    every file of the dataset, and so every stored metric, as it was."""
    sizes = [Image.open(path).size for path in dataset_root.glob("*/*/*.jpeg")]
    assert len(sizes) == 5856
    assert max(min(size) for size in sizes) <= DATASET_SHORTER_SIDE


def test_shipped_model_reproduces_its_test_metrics(predictor, dataset_root, tmp_path):
    stored = json.loads((shipped_model_dir() / "test_metrics.json").read_text())
    report = evaluate(shipped_model_dir(), dataset_root, "test", out=tmp_path)
    for key in ("accuracy", "sensitivity", "specificity"):
        assert report["metrics"][key] == pytest.approx(stored["metrics"][key], abs=2 / 624)
    assert report["metrics"]["auc"] == pytest.approx(stored["metrics"]["auc"], abs=1e-3)
    assert (tmp_path / "test_roc.png").stat().st_size > 0


def test_gradcam_overlay_has_the_image_size_and_a_hot_region(predictor):
    path = next(p for p in sample_files() if p.parent.name == "PNEUMONIA")
    image = Image.open(path)
    overlay = Image.open(io.BytesIO(predictor.explain(path.read_bytes())))
    assert overlay.format == "PNG" and overlay.size == image.size and overlay.mode == "RGB"
    cam = predictor._gradcam(preprocess_image(image))
    assert cam.max() == pytest.approx(1.0) and cam.std() > 0.05


def test_short_training_run_lowers_the_loss_and_writes_every_artefact(dataset_root, tmp_path):
    keras.backend.clear_session()
    epochs_seen = []
    config = TrainConfig(
        data=dataset_root,
        out=tmp_path / "m",
        epochs=3,
        batch_size=16,
        limit_per_class=24,
        width=16,
        learning_rate=3e-3,
        max_zoom_in=0.3,
        centre_brightness=0.05,
        detail_gain=1.5,
        framing_views=1,
        estimate_film_shape=True,
    )
    report = train(config, on_epoch=lambda i, n, logs: epochs_seen.append(i), log=lambda _: None)
    history = json.loads((config.out / "history.json").read_text())
    assert history["loss"][-1] < history["loss"][0]
    assert epochs_seen == [1, 2, 3]
    for name in (
        "model.keras",
        "model.json",
        "train_metrics.json",
        "training.png",
        "validation_roc.png",
        "validation_confusion.png",
    ):
        assert (config.out / name).stat().st_size > 0, name
    assert 0.0 <= report["metrics"]["auc"] <= 1.0
    assert report["environment"]["keras"] == keras.__version__
    assert report["config"]["estimate_film_shape"] is True
    assert report["config"]["framing_views"] == 1
    shape = report["data"]["film_shape"]
    trained = report["data"]["train"]["normal"] + report["data"]["train"]["pneumonia"]
    assert shape["films_of_known_shape"] + shape["films_of_estimated_shape"] == trained
    reloaded = Predictor.load(config.out)
    assert reloaded.threshold == pytest.approx(report["metrics"]["threshold"])
    zoom = next(
        layer
        for layer in reloaded.model.get_layer("augment").layers
        if isinstance(layer, keras.layers.RandomZoom)
    )
    assert list(zoom.height_factor) == [-0.3, 0.15]  # --max-zoom-in reached the network
    centre = reloaded.model.get_layer("augment").layers[5]
    assert centre.__class__.__name__ == "RandomCentreBrightness" and centre.factor == 0.05
    detail = reloaded.model.get_layer("augment").layers[6]
    assert detail.__class__.__name__ == "RandomDetailGain" and detail.max_gain == 1.5


def test_class_weights_give_each_class_half_the_total_weight():
    from mlcore.train import _class_weights

    labels = np.array([0, 1, 1, 1, 0, 1, 1, 1], dtype=np.float32)
    weights = _class_weights(labels)
    assert weights.tolist() == [2.0, 2 / 3, 2 / 3, 2 / 3, 2.0, 2 / 3, 2 / 3, 2 / 3]
    assert weights[labels == 0].sum() == pytest.approx(weights[labels == 1].sum())


def test_cancelled_training_writes_no_model(dataset_root, tmp_path):
    from mlcore.train import TrainingCancelled

    config = TrainConfig(
        data=dataset_root, out=tmp_path / "m", epochs=2, batch_size=16, limit_per_class=16, width=16
    )
    with pytest.raises(TrainingCancelled):
        train(config, should_stop=lambda: True, log=lambda _: None)
    assert not (config.out / "model.keras").exists()


def test_a_run_out_of_time_keeps_its_first_epoch(dataset_root, tmp_path):
    keras.backend.clear_session()
    config = TrainConfig(  # the budget is spent before the first epoch ends
        data=dataset_root, out=tmp_path / "m", epochs=3, limit_per_class=16, max_seconds=0.001
    )
    report = train(config, log=lambda _: None)
    assert report["training"]["epochs_run"] == 1
    assert (config.out / "model.keras").is_file()


def test_the_budget_stops_before_an_epoch_as_long_as_the_longest_would_overrun(monkeypatch):
    from types import SimpleNamespace

    from mlcore import train as training

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock.now)
    callback = training._ProgressCallback(5, None, None, deadline=95.0)
    callback.set_model(SimpleNamespace(stop_training=False))
    # epochs of 10, 40 and 10 s: after the third, 60 + 40 > 95 stops it; judged by the
    # last, the first or the mean epoch it would go on
    for epoch, (begin, end) in enumerate([(0.0, 10.0), (10.0, 50.0), (50.0, 60.0)]):
        clock.now = begin
        callback.on_epoch_begin(epoch)
        clock.now = end
        callback.on_epoch_end(epoch)
        assert callback.model.stop_training == (epoch == 2)


def test_fast_path_is_dropped_when_it_disagrees_with_keras(predictor, monkeypatch):
    from mlcore import fastpath

    assert fastpath.lite_forward_or_none(predictor.model) is not None
    monkeypatch.setattr(
        fastpath.LiteForward, "__call__", lambda self, batch: batch[:, :1, 0, 0] * 0 + np.nan
    )
    assert fastpath.lite_forward_or_none(predictor.model) is None


def test_the_heatmap_path_reads_like_predict_and_can_encode_jpeg(predictor):
    data = next(p for p in sample_files() if p.parent.name == "NORMAL").read_bytes()
    reading, jpeg = predictor.predict_with_heatmap(data, max_side=512, image_format="JPEG")
    plain = predictor.predict(data)
    assert abs(reading.probability - plain.probability) < 1e-4 and reading.label == plain.label
    overlay = Image.open(io.BytesIO(jpeg))
    assert overlay.format == "JPEG" and max(overlay.size) == 512
    with pytest.raises(ValueError, match="overlay format"):
        predictor.predict_with_heatmap(data, image_format="GIF")
    png = encode(Image.open(io.BytesIO(data)), "PNG")  # read from its one whole decode
    reading, _ = predictor.predict_with_heatmap(png, max_side=512, image_format="JPEG")
    assert abs(reading.probability - predictor.predict(png).probability) < 1e-4
