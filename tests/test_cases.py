"""Case page, status endpoint, re-run, model registration and the prediction task (in-process)."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import IntegrityError, OperationalError
from django.utils import timezone
from fixtures.casedata import NORMAL_SAMPLE, PNEUMONIA_SAMPLE
from PIL import Image

from diagnoses import services
from diagnoses.imaging import validate_bytes
from diagnoses.models import Case, ModelVersion, Prediction
from diagnoses.tasks import run_prediction

pytest_plugins = ["fixtures.casekit"]
pytestmark = pytest.mark.django_db


def make_case(user, path=NORMAL_SAMPLE, reference="") -> Case:
    return services.create_case(
        validated=validate_bytes(path.read_bytes()),
        original_filename=path.name,
        uploaded_by=user,
        reference=reference,
    )


# --------------------------------------------------------------------------------------
# The task, in-process with the real model
# --------------------------------------------------------------------------------------
def test_run_prediction_matches_the_model_and_stores_a_heatmap(
    active_model,
    staff_user,
    reference_predictor,
):
    case = make_case(staff_user, PNEUMONIA_SAMPLE)
    prediction = case.predictions.get()

    assert run_prediction.apply(args=[prediction.pk]).get() == "done"

    prediction.refresh_from_db()
    expected = reference_predictor.predict(PNEUMONIA_SAMPLE.read_bytes())
    assert prediction.status == Prediction.Status.DONE
    assert 0.0 <= prediction.probability <= 1.0
    assert prediction.probability == pytest.approx(expected.probability, abs=1e-4)
    assert prediction.label == expected.label
    assert prediction.threshold == pytest.approx(active_model.threshold)
    assert prediction.inference_ms > 0
    assert prediction.started_at <= prediction.finished_at
    heatmap = Image.open(prediction.heatmap)
    assert heatmap.format == "JPEG" and heatmap.size == (case.width, case.height)


def test_run_prediction_twice_writes_one_result(active_model, staff_user, media_dir):
    prediction = make_case(staff_user).predictions.get()

    assert run_prediction(prediction.pk) == "done"
    first = Prediction.objects.get(pk=prediction.pk)
    heatmaps = list((media_dir / "predictions").rglob("*.jpg"))

    assert run_prediction(prediction.pk) == "skipped"
    assert run_prediction.apply(args=[prediction.pk]).get() == "skipped"
    again = Prediction.objects.get(pk=prediction.pk)
    assert (again.finished_at, again.heatmap.name, again.task_id) == (
        first.finished_at,
        first.heatmap.name,
        first.task_id,
    )
    assert (
        list((media_dir / "predictions").rglob("*.jpg"))
        == heatmaps
        == [media_dir / first.heatmap.name]
    )


def test_a_delivery_that_lost_its_claim_does_not_write(active_model, staff_user, media_dir):
    prediction = make_case(staff_user).predictions.get()
    claimed = services.claim_prediction(prediction_id=prediction.pk, task_id="first")
    computed = services.compute_reading(claimed)
    # A second delivery (say after the first worker was presumed dead) takes the claim...
    Prediction.objects.filter(pk=prediction.pk).update(task_id="second")

    assert services.save_reading(prediction=claimed, task_id="first", computed=computed) is False
    assert Prediction.objects.get(pk=prediction.pk).status == Prediction.Status.RUNNING
    assert not (media_dir / "predictions").exists() or not any(
        path.is_file() for path in (media_dir / "predictions").rglob("*")
    )
    assert services.save_reading(prediction=claimed, task_id="second", computed=computed)
    assert Prediction.objects.get(pk=prediction.pk).status == Prediction.Status.DONE


def test_running_prediction_of_another_live_delivery_is_not_claimed(active_model, staff_user):
    prediction = make_case(staff_user).predictions.get()
    assert services.claim_prediction(prediction_id=prediction.pk, task_id="a") is not None
    assert services.claim_prediction(prediction_id=prediction.pk, task_id="b") is None
    assert services.claim_prediction(prediction_id=prediction.pk, task_id="a") is not None  # retry
    Prediction.objects.filter(pk=prediction.pk).update(
        started_at=timezone.now() - timedelta(hours=1)
    )
    assert services.claim_prediction(prediction_id=prediction.pk, task_id="b") is not None


def test_undecodable_stored_image_marks_the_prediction_failed(active_model, staff_user):
    case = make_case(staff_user)
    with case.original.open("wb") as fh:
        fh.write(b"GIF89a not an x-ray")
    prediction = case.predictions.get()

    assert run_prediction(prediction.pk) == "failed"
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.FAILED
    assert "Unsupported file type" in prediction.error_message
    assert prediction.probability is None and prediction.finished_at is not None


def test_transient_errors_are_retried_then_fail_with_a_reason(active_model, staff_user):
    prediction = make_case(staff_user).predictions.get()
    with mock.patch.object(
        services, "compute_reading", side_effect=OperationalError("database is locked")
    ) as compute:
        run_prediction.apply(args=[prediction.pk])
    assert compute.call_count == run_prediction.max_retries + 1 == 6
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.FAILED
    assert "after 5 retries" in prediction.error_message
    assert "database is locked" in prediction.error_message


def test_transient_error_then_success(active_model, staff_user):
    prediction = make_case(staff_user).predictions.get()
    real = services.compute_reading
    errors = [ConnectionError("storage unreachable")]

    def flaky(claimed):
        if errors:
            raise errors.pop()
        return real(claimed)

    with mock.patch.object(services, "compute_reading", side_effect=flaky) as compute:
        run_prediction.apply(args=[prediction.pk])
    assert compute.call_count == 2
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE


def test_worker_model_cache_is_written_from_storage_and_db(active_model, var_dir, model_dir):
    from diagnoses.predictors import ensure_local_model_dir

    local = ensure_local_model_dir(active_model)
    assert local == var_dir / "model-cache" / active_model.name
    assert (local / "model.keras").read_bytes() == (model_dir / "model.keras").read_bytes()
    assert json.loads((local / "model.json").read_text())["threshold"] == active_model.threshold


# --------------------------------------------------------------------------------------
# Model versions
# --------------------------------------------------------------------------------------
def test_ensure_model_is_idempotent(active_model, model_dir, media_dir):
    assert active_model.is_active and active_model.image_size == 224
    stored = media_dir / active_model.model_file.name
    assert stored.read_bytes() == (model_dir / "model.keras").read_bytes()
    out = io.StringIO()
    call_command("ensure_model", stdout=out)
    assert "up to date" in out.getvalue()
    assert ModelVersion.objects.count() == 1
    assert len(list((media_dir / "models").rglob("model.keras"))) == 1


def test_ensure_model_registers_new_folders_without_changing_the_active_one(
    active_model,
    model_dir,
    settings,
    tmp_path,
):
    newer = Path(settings.PNEUMOSITE_MODELS_DIR) / "v-newer"
    newer.mkdir()
    (newer / "model.keras").symlink_to(model_dir / "model.keras")
    (newer / "model.json").write_text('{"version": "v-newer", "threshold": 0.4, "image_size": 224}')
    (newer / "test_metrics.json").write_text('{"metrics": {"auc": 0.97}}')
    call_command("ensure_model", stdout=io.StringIO())
    registered = ModelVersion.objects.get(name="v-newer")
    assert registered.test_metrics == {"auc": 0.97} and registered.threshold == 0.4
    assert ModelVersion.objects.get(is_active=True) == active_model


@pytest.mark.parametrize("default", ["a-first", "b-second", ""])
def test_a_fresh_install_serves_the_version_named_in_default(
    model_dir, var_dir, settings, tmp_path, default
):
    """A fresh clone gives every folder the same mtime: the DEFAULT file decides, not
    the order of the names (without it, the newest registered)."""
    models = tmp_path / "models"
    for name in ("a-first", "b-second"):
        (models / name).mkdir(parents=True)
        (models / name / "model.keras").symlink_to(model_dir / "model.keras")
        (models / name / "model.json").write_text(
            json.dumps({"version": name, "threshold": 0.5, "image_size": 224})
        )
    if default:
        (models / "DEFAULT").write_text(default + "\n")
    settings.PNEUMOSITE_MODELS_DIR = models
    call_command("ensure_model", stdout=io.StringIO())
    assert ModelVersion.objects.get(is_active=True).name == (default or "b-second")


def test_the_repository_default_is_a_shipped_model():
    from django.conf import settings

    models = Path(settings.PNEUMOSITE_MODELS_DIR)
    name = (models / services.DEFAULT_MODEL_FILE).read_text().strip()
    assert json.loads((models / name / "model.json").read_text())["version"] == name


def test_a_models_preprocessing_survives_registration_and_the_worker_cache(
    active_model, model_dir, settings
):
    """A model trained with other preprocessing options is served with those options."""
    from diagnoses.predictors import ensure_local_model_dir

    folder = Path(settings.PNEUMOSITE_MODELS_DIR) / "v-cropped"
    folder.mkdir()
    (folder / "model.keras").symlink_to(model_dir / "model.keras")
    written = {
        "version": "v-cropped",
        "threshold": 0.4,
        "image_size": 224,
        "normalization": "clahe",
        "crop_to_body": True,
        "normalize_detail": True,
        "detail_bands": 3,
    }
    (folder / "model.json").write_text(json.dumps(written))
    call_command("ensure_model", stdout=io.StringIO())
    registered = ModelVersion.objects.get(name="v-cropped")
    assert (
        registered.normalization,
        registered.crop_to_body,
        registered.normalize_detail,
        registered.detail_bands,
    ) == ("clahe", True, True, 3)
    local = ensure_local_model_dir(registered)
    assert json.loads((local / "model.json").read_text()) == written
    assert (
        json.loads((ensure_local_model_dir(active_model) / "model.json").read_text())[
            "crop_to_body"
        ]
        is False
    )


def test_worker_cache_written_before_preprocessing_options_is_reused(active_model):
    from diagnoses.predictors import ensure_local_model_dir

    local = ensure_local_model_dir(active_model)
    old_format = {"version": active_model.name, "threshold": active_model.threshold}
    (local / "model.json").write_text(json.dumps({**old_format, "image_size": 224}))
    keras_file_before = (local / "model.keras").stat().st_ino
    assert ensure_local_model_dir(active_model) == local
    assert (local / "model.keras").stat().st_ino == keras_file_before  # not rebuilt


def test_activate_model_version_keeps_exactly_one_active(active_model):
    other = ModelVersion.objects.create(
        name="other", model_file=active_model.model_file.name, threshold=0.5, image_size=224
    )
    services.activate_model_version(other)
    assert list(ModelVersion.objects.filter(is_active=True)) == [other]
    services.activate_model_version(active_model)
    assert list(ModelVersion.objects.filter(is_active=True)) == [active_model]
    with pytest.raises(IntegrityError):
        ModelVersion.objects.filter(pk=other.pk).update(is_active=True)


def test_probability_outside_0_1_is_refused_by_the_database(active_model, staff_user):
    prediction = make_case(staff_user).predictions.get()
    with pytest.raises(IntegrityError):
        Prediction.objects.filter(pk=prediction.pk).update(probability=1.5)


# --------------------------------------------------------------------------------------
# Case page, status endpoint, re-run
# --------------------------------------------------------------------------------------
def test_case_page_while_queued_polls_the_status(staff_client, staff_user, active_model):
    case = make_case(staff_user, reference="R-1")
    body = staff_client.get(f"/cases/{case.pk}/").content.decode()
    assert "Decision support only — not a diagnosis. A clinician must review every image." in body
    assert "Prediction queued" in body
    assert f'data-status-url="/cases/{case.pk}/status.json"' in body and 'data-pending="1"' in body
    assert f"/cases/{case.pk}/image/display/" in body
    assert "/image/heatmap/" not in body

    status = staff_client.get(f"/cases/{case.pk}/status.json").json()
    assert status["status"] == "queued" and status["pending"] is True
    assert status["reading"] is None


def test_case_page_warns_about_a_film_padded_with_black_margins(
    staff_client, staff_user, active_model
):
    film = Image.open(NORMAL_SAMPLE).convert("L")
    padded = Image.new("L", (round(film.width * 1.25), round(film.height * 1.25)), 0)
    padded.paste(film, ((padded.width - film.width) // 2, (padded.height - film.height) // 2))
    buffer = io.BytesIO()
    padded.save(buffer, format="PNG")
    padded_case = services.create_case(
        validated=validate_bytes(buffer.getvalue()),
        original_filename="padded.png",
        uploaded_by=staff_user,
    )
    plain_case = make_case(staff_user)
    assert plain_case.body_share > 0.8 and not plain_case.is_unusually_framed
    assert padded_case.body_share < 0.65 and padded_case.is_unusually_framed
    assert 'id="framing-warning"' in staff_client.get(f"/cases/{padded_case.pk}/").content.decode()
    assert (
        'id="framing-warning"' not in staff_client.get(f"/cases/{plain_case.pk}/").content.decode()
    )


def test_case_page_shows_the_reading_and_heatmap_when_done(
    staff_client,
    staff_user,
    active_model,
):
    case = make_case(staff_user, PNEUMONIA_SAMPLE)
    prediction = case.predictions.get()
    run_prediction(prediction.pk)
    prediction.refresh_from_db()

    body = staff_client.get(f"/cases/{case.pk}/").content.decode()
    percent = f"{prediction.probability * 100:.1f}%"
    if prediction.label == "pneumonia":
        assert f"Pneumonia likely — {percent}" in body
    else:
        assert f"Normal likely — {percent} pneumonia probability" in body
    assert f"model {active_model.name}" in body
    assert f"/cases/{case.pk}/image/heatmap/" in body and 'id="heatmap-opacity"' in body
    assert 'data-pending="0"' in body

    status = staff_client.get(f"/cases/{case.pk}/status.json").json()
    assert status["status"] == "done" and status["pending"] is False
    assert status["reading"]["probability"] == pytest.approx(prediction.probability)

    response = staff_client.get(f"/cases/{case.pk}/image/heatmap/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == prediction.heatmap.open("rb").read()
    assert response["Content-Type"] == "image/jpeg"
    assert f'filename="case-{case.pk}-heatmap.jpg"' in response["Content-Disposition"]
    # A re-run replaces the overlay behind the same URL: the browser must revalidate.
    assert response["Cache-Control"] == "private, no-cache"
    assert "max-age" in staff_client.get(f"/cases/{case.pk}/image/display/")["Cache-Control"]

    prediction.heatmap.storage.delete(prediction.heatmap.name)
    assert staff_client.get(f"/cases/{case.pk}/image/heatmap/").status_code == 404


def test_reading_text():
    from diagnoses.templatetags.diagnoses_tags import reading_text

    assert reading_text("pneumonia", 0.9734) == "Pneumonia likely — 97.3%"
    assert reading_text("normal", 0.121) == "Normal likely — 12.1% pneumonia probability"
    assert reading_text("", None) == "No reading yet"


def test_images_are_served_through_the_view(staff_client, staff_user, active_model):
    case = make_case(staff_user)
    original = staff_client.get(f"/cases/{case.pk}/image/original/")
    assert original.status_code == 200
    assert b"".join(original.streaming_content) == NORMAL_SAMPLE.read_bytes()
    assert f'filename="case-{case.pk}.jpg"' in original["Content-Disposition"]
    for kind in ("display", "thumbnail"):
        assert staff_client.get(f"/cases/{case.pk}/image/{kind}/").status_code == 200
    assert staff_client.get(f"/cases/{case.pk}/image/heatmap/").status_code == 404
    assert staff_client.get(f"/cases/{case.pk}/image/secrets/").status_code == 404


def test_a_heatmap_stored_as_png_before_jpeg_is_still_served_as_png(
    staff_client, staff_user, active_model
):
    case = make_case(staff_user)
    prediction = case.predictions.get()
    run_prediction(prediction.pk)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    storage = Prediction._meta.get_field("heatmap").storage
    old_name = storage.save("predictions/heatmap/old.png", ContentFile(buffer.getvalue()))
    Prediction.objects.filter(pk=prediction.pk).update(heatmap=old_name)

    response = staff_client.get(f"/cases/{case.pk}/image/heatmap/")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert f'filename="case-{case.pk}-heatmap.png"' in response["Content-Disposition"]


def test_remote_storage_redirects_to_a_signed_url(staff_client, staff_user, active_model):
    case = make_case(staff_user)
    storage = FileSystemStorage
    with (
        mock.patch.object(storage, "path", side_effect=NotImplementedError),
        mock.patch.object(
            storage, "url", return_value="https://s3.example/x?X-Amz-Signature=1"
        ) as signed_url,
    ):
        response = staff_client.get(f"/cases/{case.pk}/image/original/")
    assert response.status_code == 302
    assert response["Location"] == "https://s3.example/x?X-Amz-Signature=1"
    disposition = signed_url.call_args.kwargs["parameters"]["ResponseContentDisposition"]
    assert disposition == f'inline; filename="case-{case.pk}.jpg"'


def test_rerun_queues_one_prediction_with_the_active_model(
    staff_client,
    staff_user,
    active_model,
):
    case = make_case(staff_user)
    first = case.predictions.get()
    staff_client.post(f"/cases/{case.pk}/rerun/")
    assert case.predictions.count() == 1  # the queued one is identical

    run_prediction(first.pk)
    response = staff_client.post(f"/cases/{case.pk}/rerun/")
    assert response.status_code == 302 and response["Location"] == f"/cases/{case.pk}/"
    newest = case.predictions.order_by("-pk").first()
    assert case.predictions.count() == 2
    assert newest.status == Prediction.Status.QUEUED and newest.model_version == active_model
    assert staff_client.get(f"/cases/{case.pk}/rerun/").status_code == 405


# --------------------------------------------------------------------------------------
# Requeueing
# --------------------------------------------------------------------------------------
def test_requeue_stale_predictions_resends_old_queued_ones(
    active_model,
    staff_user,
    filesystem_broker,
    celery_app_broker,
):
    celery_app_broker(filesystem_broker)
    old, fresh, done = (make_case(staff_user).predictions.get() for _ in range(3))
    long_ago = timezone.now() - timedelta(minutes=10)
    Prediction.objects.filter(pk__in=[old.pk, done.pk]).update(queued_at=long_ago)
    Prediction.objects.filter(pk=done.pk).update(status=Prediction.Status.DONE, probability=0.2)

    out = io.StringIO()
    call_command("requeue_stale_predictions", "--older-than", "60", stdout=out)
    assert "Requeued 1 prediction(s)" in out.getvalue()
    messages = list(Path(filesystem_broker.transport_options["data_folder_out"]).iterdir())
    assert len(messages) == 1 and f"({old.pk},)" in messages[0].read_text()
    assert Prediction.objects.get(pk=old.pk).last_sent_at is not None

    call_command("requeue_stale_predictions", "--older-than", "60", stdout=out)
    assert "Requeued 0 prediction(s)" in out.getvalue()


@pytest.mark.parametrize("status", [Prediction.Status.QUEUED, Prediction.Status.RUNNING])
def test_requeue_slows_down_after_a_few_sends(
    active_model, staff_user, filesystem_broker, celery_app_broker, status
):
    """A long worker outage leaves a few duplicate messages per upload, not one a minute,
    whether the prediction waits or its worker died mid-run."""
    celery_app_broker(filesystem_broker)
    prediction = make_case(staff_user).predictions.get()
    ten_minutes_ago = timezone.now() - timedelta(minutes=10)
    started = timezone.now() - timedelta(hours=3) if status == Prediction.Status.RUNNING else None
    Prediction.objects.filter(pk=prediction.pk).update(
        status=status,
        started_at=started,
        last_sent_at=ten_minutes_ago,
        send_count=services.FREQUENT_SENDS - 1,
    )
    assert services.requeue_stale_predictions(older_than=timedelta(minutes=1)) == [prediction.pk]
    # The next sweep, a minute later: just re-sent, so not again.
    assert services.requeue_stale_predictions(older_than=timedelta(minutes=1)) == []
    Prediction.objects.filter(pk=prediction.pk).update(last_sent_at=ten_minutes_ago)
    assert services.requeue_stale_predictions(older_than=timedelta(minutes=1)) == []
    Prediction.objects.filter(pk=prediction.pk).update(
        last_sent_at=timezone.now() - services.SLOW_RESEND - timedelta(seconds=1)
    )
    assert services.requeue_stale_predictions(older_than=timedelta(minutes=1)) == [prediction.pk]


def test_a_prediction_that_keeps_killing_its_worker_is_given_up(active_model, staff_user):
    prediction = make_case(staff_user).predictions.get()
    for _ in range(services.MAX_PREDICTION_ATTEMPTS):
        # a redelivery after a crash: same message, claimed again
        assert services.claim_prediction(prediction_id=prediction.pk, task_id="t-1") is not None
    assert services.claim_prediction(prediction_id=prediction.pk, task_id="t-1") is None
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.FAILED
    assert "without finishing" in prediction.error_message


def test_requeue_is_a_periodic_task(settings):
    from pneumosite.celery import app

    schedule = settings.CELERY_BEAT_SCHEDULE.values()
    assert {"task": "diagnoses.tasks.requeue_stale_predictions", "schedule": 60.0} in schedule
    assert "diagnoses.tasks.requeue_stale_predictions" in app.tasks


def test_upload_form_posts_to_cases(staff_client, active_model):
    data = NORMAL_SAMPLE.read_bytes()
    response = staff_client.post("/upload/", {"files": [SimpleUploadedFile("a.jpeg", data)]})
    assert response.status_code == 302
    assert Case.objects.get().predictions.get().model_version == active_model


@pytest.mark.django_db
def test_shipped_model_registers_with_its_metrics_and_plots(tmp_path, settings):
    from diagnoses.services import MODEL_PLOT_FILES, register_model_dir

    shipped = sorted(p.parent for p in (settings.BASE_DIR / "models").glob("*/model.json"))[-1]
    version = register_model_dir(shipped)
    assert version.test_metrics["n"] == 624 and 0 < version.test_metrics["auc"] <= 1
    assert version.validation_metrics["threshold"] == pytest.approx(version.threshold)
    # An averaged model has no training curves of its own; every plot it ships is stored.
    shipped_plots = {key for key, name in MODEL_PLOT_FILES.items() if (shipped / name).is_file()}
    assert {"validation_roc", "validation_confusion", "test_roc", "test_confusion"} <= shipped_plots
    assert set(version.plots) == shipped_plots
    storage = version.model_file.storage
    assert all(storage.exists(name) for name in version.plots.values())
