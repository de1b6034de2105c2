"""Distillation: one network trained on a frozen model's reading of the same augmented view."""

import dataclasses

import keras
import numpy as np
import pytest
from conftest import require_service
from mlcore_support import DATASET

from mlcore.distill import StudentAUC, distillation_loss, load_teacher, with_teacher
from mlcore.model import build_ensemble, build_model
from mlcore.preprocess import Preprocessing
from mlcore.serialization import ModelMetadata, save_model_dir
from mlcore.train import TrainConfig, train

SIZE = 64


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A two-member ensemble with dropout, saved like any model folder; random weights, with
    a classifier steep enough that its readings of different films differ."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    members = [build_model(SIZE, width=8, dropout=0.5, seed=seed) for seed in (0, 1)]
    for member in members:
        kernel, bias = member.get_layer("pneumonia").get_weights()
        member.get_layer("pneumonia").set_weights([rng.normal(0, 30, kernel.shape), bias])
    folder = tmp_path_factory.mktemp("teacher")
    save_model_dir(
        build_ensemble(members), folder, ModelMetadata("teacher", 0.5, Preprocessing(SIZE))
    )
    return folder


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 1)).astype(np.float32)


def test_the_teacher_reads_the_students_augmented_view_in_inference_mode(teacher_dir, pixels):
    teacher = load_teacher(teacher_dir)
    student = build_model(SIZE, width=8, seed=2)
    pair = with_teacher(student, teacher)
    view = student.get_layer("augment").output
    probe = keras.Model(student.input, [view, pair.output])

    seen, readings = (np.asarray(a) for a in probe(pixels, training=True))
    assert not np.allclose(seen, pixels / 255.0, atol=1e-3)  # augmentation was on
    # Dropout or batch statistics in the teacher would make its reading differ from this.
    expected = np.asarray(teacher(seen, training=False))
    assert np.allclose(readings[:, 1:], expected, atol=1e-5)
    assert readings.shape == (len(pixels), 2)


def test_fitting_moves_the_student_towards_the_teacher_and_trains_only_the_student(
    teacher_dir, pixels
):
    keras.utils.set_random_seed(3)
    teacher = load_teacher(teacher_dir)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    student = build_model(SIZE, width=8, dropout=0.0, seed=3, augment=False)
    pair = with_teacher(student, teacher)
    pair.compile(optimizer=keras.optimizers.Adam(3e-3), loss=distillation_loss(1.0, 0.05))
    labels = np.zeros(len(pixels), dtype=np.float32)  # ignored at teacher weight 1

    def gap() -> float:
        # In training mode: eight films are too few steps for the moving statistics of
        # the student's batch normalisation to settle.
        readings = np.asarray(pair(pixels, training=True))
        return float(np.abs(readings[:, 0] - readings[:, 1]).mean())

    assert np.asarray(pair(pixels, training=False))[:, 1].std() > 0.05
    before = gap()
    pair.fit(pixels, labels, batch_size=8, epochs=60, verbose=0)
    assert gap() < before / 10
    for kept, now in zip(teacher_weights, teacher.get_weights(), strict=True):
        assert np.array_equal(kept, now)


def test_the_loss_mixes_label_and_teacher_by_weight():
    labels = np.array([1.0, 0.0, 1.0], dtype=np.float32)
    student = np.array([[0.7], [0.2], [0.4]], dtype=np.float32)
    teacher = np.array([[0.9], [0.5], [0.1]], dtype=np.float32)
    readings = np.concatenate([student, teacher], axis=1)

    def bce(target, p):
        return -(target * np.log(p) + (1 - target) * np.log(1 - p))

    smoothed = labels[:, None] * 0.95 + 0.025
    from_label, from_teacher = bce(smoothed, student)[:, 0], bce(teacher, student)[:, 0]
    for weight in (0.0, 0.3, 1.0):
        loss = distillation_loss(weight, 0.05)
        expected = (1 - weight) * from_label + weight * from_teacher
        assert np.allclose(loss(labels, readings), expected, atol=1e-5)
        assert np.allclose(loss(labels[:, None], readings), expected, atol=1e-5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        distillation_loss(1.5, 0.05)
    with pytest.raises(ValueError, match="between 0 and 1"):
        TrainConfig(data=DATASET, out=DATASET, teacher_weight=-0.1)


def test_student_auc_scores_the_student_column_with_its_weights():
    labels = np.array([0, 0, 1, 1, 0, 1], dtype=np.float32)
    student = np.array([0.1, 0.7, 0.8, 0.6, 0.3, 0.2], dtype=np.float32)
    readings = np.stack([student, 1 - student], axis=1)  # the teacher column backwards
    weights = np.array([1.0, 3.0, 1.0, 0.5, 2.0, 1.0], dtype=np.float32)
    for shaped in (labels, labels[:, None]):
        metric, plain = StudentAUC(), keras.metrics.AUC()
        metric.update_state(shaped, readings, sample_weight=weights)
        plain.update_state(labels, student, sample_weight=weights)
        assert float(metric.result()) == pytest.approx(float(plain.result()))
        assert 0.0 < float(metric.result()) < 1.0


def test_a_teacher_of_another_size_is_refused(teacher_dir):
    teacher = load_teacher(teacher_dir)
    with pytest.raises(ValueError, match="the student takes"):
        with_teacher(build_model(SIZE * 2, width=8), teacher)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    require_service("dataset", DATASET.is_dir(), f"{DATASET} (Kermany et al. 2018) is absent")
    keras.backend.clear_session()
    config = TrainConfig(
        data=DATASET,
        out=tmp_path_factory.mktemp("models") / "teacher",
        epochs=1,
        batch_size=16,
        image_size=SIZE,
        limit_per_class=12,
        width=8,
    )
    train(config, log=lambda _: None)
    return config


def test_training_with_a_teacher_writes_a_plain_single_network(trained_teacher, tmp_path):
    config = dataclasses.replace(
        trained_teacher, out=tmp_path / "student", teacher=trained_teacher.out, seed=1
    )
    report = train(config, log=lambda _: None)
    student = keras.models.load_model(config.out / "model.keras")
    assert student.count_params() == build_model(SIZE, width=8).count_params()
    assert report["config"]["teacher"] == str(trained_teacher.out)
    assert ModelMetadata.read(config.out).preprocessing == trained_teacher.preprocessing


def test_a_teacher_fed_other_inputs_is_refused(trained_teacher, tmp_path):
    config = dataclasses.replace(
        trained_teacher, out=tmp_path / "student", teacher=trained_teacher.out, crop_to_body=True
    )
    with pytest.raises(ValueError, match="learn from it"):
        train(config, log=lambda _: None)
    assert not config.out.exists()
