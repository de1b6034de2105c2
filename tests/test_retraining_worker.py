"""Retraining on REAL Celery workers: one on the "training" queue runs the job (real mlcore,
a small subset of the base dataset via the limit_per_class option), one on "inference"
keeps computing predictions meanwhile."""

from __future__ import annotations

import pytest
from conftest import wait_for
from fixtures.staffdata import (
    NORMAL_SAMPLES,
    PNEUMONIA_SAMPLES,
    TRAIN_NORMAL,
    TRAIN_PNEUMONIA,
    make_case,
    worker_env,
)

from diagnoses import retraining, reviews, services
from diagnoses.models import ModelVersion, Prediction, RetrainingJob

pytest_plugins = ["fixtures.staffkit"]
pytestmark = [pytest.mark.worker, pytest.mark.slow]

SMALL = {"limit_per_class": 8}


def job_state(job):
    job.refresh_from_db()
    return job


def prediction_done(case, timeout=120):
    return wait_for(
        lambda: case.predictions.filter(status=Prediction.Status.DONE).order_by("-pk").first(),
        timeout=timeout,
        message=f"the prediction of case {case.pk} did not finish",
    )


def start_workers(celery_worker_factory, broker, var):
    env = worker_env(var)
    inference = celery_worker_factory(broker, queues=("inference",), extra_env=env)
    training = celery_worker_factory(broker, queues=("training",), extra_env=env)
    return inference, training


def test_a_retraining_job_registers_an_inactive_version_and_activation_switches_predictions(
    celery_worker_factory, filesystem_broker, staff_var, reviewer, real_version
):
    inference, training = start_workers(celery_worker_factory, filesystem_broker, staff_var)
    normal = make_case(reviewer, TRAIN_NORMAL)
    pneumonia = make_case(reviewer, TRAIN_PNEUMONIA)
    unusable = make_case(reviewer, NORMAL_SAMPLES[1])
    for case, verdict in ((normal, "normal"), (pneumonia, "pneumonia"), (unusable, "unusable")):
        reviews.record_review(case=case, reviewer=reviewer, verdict=verdict)
    prediction_done(normal)  # the inference worker is warm

    job = retraining.request_retraining(user=reviewer, epochs=1, options=SMALL)
    wait_for(lambda: job_state(job).status == "running", 60, message="job did not start")
    during = make_case(reviewer, PNEUMONIA_SAMPLES[1])
    assert prediction_done(during).model_version == real_version
    wait_for(lambda: not job_state(job).is_active, 240, message="job did not end")

    assert job.status == "succeeded", (job.error_message, training.log_text()[-3000:])
    new = job.result
    assert not new.is_active and ModelVersion.objects.get(is_active=True) == real_version
    assert new.test_metrics["n"] == 624 and 0.0 <= new.test_metrics["auc"] <= 1.0
    assert {"accuracy", "sensitivity", "specificity", "confusion_matrix"} <= set(new.test_metrics)
    assert new.validation_metrics["n"] == 16  # 8 per class
    assert new.metrics["data"]["extra_reviewed"] == 2
    assert set(new.trained_on_cases.all()) == {normal, pneumonia}
    for name in new.plots.values():
        assert new.model_file.storage.exists(name)
    assert set(new.plots) == set(services.MODEL_PLOT_FILES)
    assert job.progress["epoch"] == 1 and job.progress["history"][0]["epoch"] == 1
    assert "epoch 1/1" in job.log_tail
    assert not list((staff_var / "retraining").iterdir())

    # Activation: the next upload uses the new version, computed by the same worker process.
    retraining.activate_version(model_version=new, user=reviewer)
    after = make_case(reviewer, NORMAL_SAMPLES[0])
    prediction = prediction_done(after)
    assert prediction.model_version == new and prediction.threshold == pytest.approx(new.threshold)
    assert inference.is_alive() and training.is_alive()


def test_inference_keeps_working_during_training_and_cancel_registers_nothing(
    celery_worker_factory, filesystem_broker, staff_var, reviewer, real_version
):
    inference, training = start_workers(celery_worker_factory, filesystem_broker, staff_var)
    prediction_done(make_case(reviewer))  # warm the inference worker
    stored_before = sorted(p for p in (staff_var / "media").rglob("*") if p.is_file())

    # far more epochs than the test waits for: only cancellation can end it
    job = retraining.request_retraining(user=reviewer, epochs=200, options=SMALL)
    wait_for(
        lambda: (job_state(job).progress.get("epoch") or 0) >= 1,
        120,
        message="no epoch finished",
    )
    during = make_case(reviewer, PNEUMONIA_SAMPLES[0])
    prediction = prediction_done(during, timeout=60)
    assert job_state(job).status == "running"  # the prediction finished while training ran
    assert prediction.finished_at > job.started_at

    # a second request is refused while this one runs
    with pytest.raises(retraining.RetrainingRefused):
        retraining.request_retraining(user=reviewer, epochs=1, options=SMALL)

    retraining.request_cancel(job=job, user=reviewer)
    wait_for(lambda: job_state(job).status == "cancelled", 60, message="job was not cancelled")
    assert job.result is None and job.finished_at is not None
    assert job.progress["epoch"] < 200
    assert list(ModelVersion.objects.all()) == [real_version]
    assert not list((staff_var / "retraining").iterdir())
    media = staff_var / "media"
    stored_after = sorted(p for p in media.rglob("*") if p.is_file())
    new_files = set(stored_after) - set(stored_before)
    assert all("models" not in p.relative_to(media).parts for p in new_files), new_files
    assert training.is_alive()
    assert RetrainingJob.objects.filter(status__in=["queued", "running"]).count() == 0
