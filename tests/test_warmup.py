"""Inference worker processes load the active model before their first reading."""

from __future__ import annotations

import io

import pytest
from fixtures.casedata import NORMAL_SAMPLE, worker_env
from PIL import Image

from diagnoses import predictors
from diagnoses.models import Case, Prediction
from diagnoses.warmup import should_warm, synthetic_film, synthetic_upload, warm_active_model
from mlcore.preprocess import body_box

pytest_plugins = ["fixtures.casekit"]


@pytest.mark.parametrize(
    "queues, enabled, expected",
    [
        (["inference"], True, True),
        (["inference", "training"], True, True),
        (["training"], True, False),
        (["inference"], False, False),
    ],
)
def test_only_workers_that_take_readings_warm_up(queues, enabled, expected):
    assert should_warm(queues, enabled) is expected


def test_the_synthetic_film_has_a_body_to_crop_to():
    film = synthetic_film()
    assert body_box(film) is not None and film.mode == "L"
    upload = Image.open(io.BytesIO(synthetic_upload()))
    assert upload.format == "JPEG" and upload.size == film.size


def test_warm_up_without_an_active_model_does_nothing(db, caplog):
    with caplog.at_level("INFO", logger="diagnoses.warmup"):
        assert warm_active_model() is None
    assert "no model version is active" in caplog.text


def test_warm_up_loads_the_active_model_and_reads_a_film(db, active_model):
    assert warm_active_model() == active_model.name
    assert active_model.name in predictors._loaded


def test_warm_up_failure_never_raises(db, active_model, monkeypatch, caplog):
    def broken(model_version):
        raise OSError("model file unreadable")

    monkeypatch.setattr(predictors, "get_predictor", broken)
    with caplog.at_level("WARNING", logger="diagnoses.warmup"):
        assert warm_active_model() is None
    assert "model warm-up failed" in caplog.text


@pytest.mark.worker
@pytest.mark.slow
def test_an_inference_worker_warms_up_and_still_reads_an_early_upload(
    celery_worker_factory, filesystem_broker, var_dir, active_model, staff_client
):
    """The upload arrives while the pool process is still warming up (the predictor cache
    is locked, so the reading waits for the same load)."""
    from test_cases_worker import upload, wait_until_finished

    worker = celery_worker_factory(
        filesystem_broker,
        queues=("inference",),
        extra_env={**worker_env(var_dir), "PNEUMOSITE_WARM_WORKER": "1"},
    )
    (case,) = upload(staff_client, NORMAL_SAMPLE)
    wait_until_finished([case.predictions.get().pk], worker)
    assert Case.objects.get(pk=case.pk).predictions.get().status == Prediction.Status.DONE
    log = worker.wait_for_log(f"warmed model {active_model.name}", timeout=120)
    assert "Traceback" not in log and "warm-up failed" not in log
