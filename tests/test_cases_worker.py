"""Upload -> Celery task -> reading, with a real worker process and the real model."""

from __future__ import annotations

import pytest
from conftest import wait_for
from django.core.files.uploadedfile import SimpleUploadedFile
from fixtures.casedata import NORMAL_SAMPLE, PNEUMONIA_SAMPLE, worker_env
from PIL import Image

from diagnoses.models import Case, Prediction
from diagnoses.tasks import run_prediction

pytest_plugins = ["fixtures.casekit"]
pytestmark = [pytest.mark.worker, pytest.mark.slow]

PREDICTION_TIMEOUT = 180  # the worker imports TensorFlow and loads the model on first use


def upload(client, *paths):
    files = [SimpleUploadedFile(path.name, path.read_bytes()) for path in paths]
    response = client.post("/upload/", {"files": files, "reference": "worker-test"})
    assert response.status_code == 302, response.content.decode()[:2000]
    return list(Case.objects.filter(reference="worker-test").order_by("pk"))


def wait_until_finished(prediction_ids, worker):
    def finished():
        statuses = Prediction.objects.filter(pk__in=prediction_ids).values_list("status", flat=True)
        return all(status in ("done", "failed") for status in statuses)

    wait_for(
        finished,
        timeout=PREDICTION_TIMEOUT,
        interval=0.5,
        message=f"predictions not finished:\n{worker.log_text()[-5000:]}",
    )


def assert_reading_matches_the_model(case: Case, path, reference_predictor):
    prediction = case.predictions.get()
    assert prediction.status == Prediction.Status.DONE, prediction.error_message
    expected = reference_predictor.predict(path.read_bytes())
    assert 0.0 <= prediction.probability <= 1.0
    assert abs(prediction.probability - expected.probability) < 1e-4
    assert prediction.label == expected.label
    assert prediction.heatmap and Image.open(prediction.heatmap).format == "JPEG"
    assert prediction.inference_ms > 0 and prediction.finished_at >= prediction.started_at


def test_upload_is_predicted_by_a_worker_over_the_filesystem_broker(
    celery_worker_factory,
    filesystem_broker,
    var_dir,
    active_model,
    staff_client,
    reference_predictor,
):
    worker = celery_worker_factory(
        filesystem_broker, queues=("inference",), extra_env=worker_env(var_dir)
    )
    normal, pneumonia = upload(staff_client, NORMAL_SAMPLE, PNEUMONIA_SAMPLE)
    predictions = list(Prediction.objects.filter(case__in=[normal, pneumonia]))
    wait_until_finished([p.pk for p in predictions], worker)

    assert_reading_matches_the_model(normal, NORMAL_SAMPLE, reference_predictor)
    assert_reading_matches_the_model(pneumonia, PNEUMONIA_SAMPLE, reference_predictor)
    assert (var_dir / "model-cache" / active_model.name / "model.keras").is_file()

    # A second delivery of a finished prediction returns at once and changes nothing.
    done = normal.predictions.get()
    run_prediction.delay(done.pk)
    worker.wait_for_log("'skipped'", timeout=60)
    again = Prediction.objects.get(pk=done.pk)
    assert (again.finished_at, again.probability, again.heatmap.name) == (
        done.finished_at,
        done.probability,
        done.heatmap.name,
    )
    status = staff_client.get(f"/cases/{normal.pk}/status.json").json()
    assert status["status"] == "done" and status["reading"]["label"] == done.label


@pytest.mark.services
def test_upload_is_predicted_by_a_worker_over_redis(
    celery_worker_factory, redis_broker, var_dir, active_model, staff_client, reference_predictor
):
    worker = celery_worker_factory(
        redis_broker, queues=("inference",), extra_env=worker_env(var_dir)
    )
    (case,) = upload(staff_client, PNEUMONIA_SAMPLE)
    wait_until_finished([case.predictions.get().pk], worker)
    assert_reading_matches_the_model(case, PNEUMONIA_SAMPLE, reference_predictor)
