"""Retraining jobs in-process: requesting, the one-active-job rule, cancelling, failure and
registration (mlcore replaced by fakes that write a model folder), staff pages.

The real training runs on a real Celery worker in test_retraining_worker.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils import timezone
from fixtures.staffdata import (
    CARVE_NORMAL,
    PNEUMONIA_SAMPLES,
    TRAIN_NORMAL,
    TRAIN_PNEUMONIA,
    make_case,
)

from diagnoses import retraining, reviews, services
from diagnoses.models import ModelVersion, RetrainingJob

pytest_plugins = ["fixtures.staffkit"]
pytestmark = pytest.mark.django_db


def stored(media: Path) -> set[str]:
    return {str(p.relative_to(media)) for p in media.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------
# Requesting
# --------------------------------------------------------------------------------------
def test_request_creates_a_queued_fine_tune_job_with_defaults(reviewer, fake_version):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    assert (job.status, job.mode, job.epochs, job.base_version) == (
        "queued",
        "fine_tune",
        3,
        fake_version,
    )
    assert job.requested_by == reviewer
    scratch = RetrainingJob.objects.filter(pk=job.pk)
    scratch.update(status="failed")
    job2 = retraining.request_retraining(user=reviewer, mode="scratch", enqueue=False)
    assert (job2.epochs, job2.base_version) == (12, None)


def test_a_second_request_is_refused_while_one_is_queued_or_running(reviewer, fake_version):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    with pytest.raises(retraining.RetrainingRefused, match="already queued or running"):
        retraining.request_retraining(user=reviewer, enqueue=False)
    RetrainingJob.objects.filter(pk=job.pk).update(status="running")
    with pytest.raises(retraining.RetrainingRefused):
        retraining.request_retraining(user=reviewer, enqueue=False)
    RetrainingJob.objects.filter(pk=job.pk).update(status="succeeded", result=fake_version)
    assert retraining.request_retraining(user=reviewer, enqueue=False).status == "queued"


@pytest.mark.parametrize("status", ["queued", "running"])
def test_database_allows_one_active_job(reviewer, status):
    RetrainingJob.objects.create(requested_by=reviewer, epochs=1, status=status)
    with pytest.raises(IntegrityError), transaction.atomic():
        RetrainingJob.objects.create(requested_by=reviewer, epochs=1, status="running")
    with pytest.raises(IntegrityError), transaction.atomic():
        RetrainingJob.objects.create(requested_by=reviewer, epochs=1, status="queued")
    RetrainingJob.objects.create(requested_by=reviewer, epochs=1, status="failed")


def test_requests_are_checked(reviewer, clinician, staff_var):
    with pytest.raises(PermissionDenied):
        retraining.request_retraining(user=clinician, mode="scratch", enqueue=False)
    with pytest.raises(retraining.RetrainingRefused, match="No model version is active"):
        retraining.request_retraining(user=reviewer, enqueue=False)
    for kwargs in (
        {"epochs": 0},
        {"epochs": 10_000},
        {"mode": "magic"},
        {"options": {"learning_rate": -1}},
        {"options": {"bogus": 1}},
    ):
        with pytest.raises(retraining.RetrainingRefused):
            retraining.request_retraining(
                user=reviewer, enqueue=False, **{"mode": "scratch", **kwargs}
            )
    assert not RetrainingJob.objects.exists()


def test_the_task_is_sent_to_the_training_queue_after_commit(
    reviewer, fake_version, filesystem_broker, celery_app_broker, django_capture_on_commit_callbacks
):
    celery_app_broker(filesystem_broker)
    with django_capture_on_commit_callbacks(execute=True):
        job = retraining.request_retraining(user=reviewer)
    messages = list(Path(filesystem_broker.transport_options["data_folder_out"]).iterdir())
    assert len(messages) == 1
    body = json.loads(messages[0].read_text())
    assert body["headers"]["task"] == "diagnoses.tasks.run_retraining"
    assert body["properties"]["delivery_info"]["routing_key"] == "training"
    job.refresh_from_db()
    assert job.celery_task_id == body["headers"]["id"]


def test_a_job_whose_task_cannot_be_sent_fails_and_does_not_block(reviewer, fake_version):
    with mock.patch("diagnoses.tasks.run_retraining.delay", side_effect=ConnectionError("down")):
        assert (
            retraining.send_retraining_task(
                retraining.request_retraining(user=reviewer, enqueue=False).pk
            )
            is False
        )
    job = RetrainingJob.objects.get()
    assert job.status == "failed" and "broker unreachable" in job.error_message
    retraining.request_retraining(user=reviewer, enqueue=False)


def test_stale_running_job_is_failed_on_the_next_request(reviewer, fake_version, settings):
    job = RetrainingJob.objects.create(
        requested_by=reviewer,
        epochs=1,
        status="running",
        started_at=timezone.now()
        - timedelta(seconds=settings.PNEUMOSITE_TRAINING_TIME_LIMIT + 120),
    )
    retraining.request_retraining(user=reviewer, enqueue=False)
    job.refresh_from_db()
    assert job.status == "failed"


# --------------------------------------------------------------------------------------
# Cancelling
# --------------------------------------------------------------------------------------
def test_cancelling_a_queued_job_ends_it_and_its_task_skips(reviewer, fake_version, clinician):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    with pytest.raises(PermissionDenied):
        retraining.request_cancel(job=job, user=clinician)
    job = retraining.request_cancel(job=job, user=reviewer)
    assert job.status == "cancelled" and job.finished_at is not None
    assert retraining.run_job(job_id=job.pk, task_id="t1") == "skipped"
    job.refresh_from_db()
    assert job.status == "cancelled" and job.started_at is None


def test_cancelling_a_running_job_sets_the_flag_the_loop_polls(reviewer, fake_version):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    job = retraining.claim_job(job_id=job.pk, task_id="t1")
    reporter = retraining.JobReporter(job)
    assert reporter.should_stop() is False
    retraining.request_cancel(job=job, user=reviewer)
    assert reporter.should_stop() is False  # throttled: at most one query per 2 s
    reporter._last_poll -= retraining.CANCEL_POLL_SECONDS
    assert reporter.should_stop() is True
    job.refresh_from_db()
    assert job.status == "running" and job.cancel_requested


def test_a_redelivered_task_reclaims_its_own_running_job_only(reviewer, fake_version):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    assert retraining.claim_job(job_id=job.pk, task_id="t1") is not None
    assert retraining.claim_job(job_id=job.pk, task_id="t2") is None
    assert retraining.claim_job(job_id=job.pk, task_id="t1") is not None


def test_a_job_whose_worker_keeps_dying_fails_instead_of_restarting_for_ever(
    reviewer, fake_version
):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    for _ in range(retraining.MAX_RETRAINING_ATTEMPTS):
        assert retraining.claim_job(job_id=job.pk, task_id="t1") is not None
    # The next redelivery of the same message (its process was killed again) gives up.
    assert retraining.claim_job(job_id=job.pk, task_id="t1") is None
    job.refresh_from_db()
    assert job.status == "failed" and job.finished_at is not None
    assert "worker stopped each time" in job.error_message
    # ...and no longer blocks the next job.
    assert retraining.request_retraining(user=reviewer, enqueue=False).status == "queued"


# --------------------------------------------------------------------------------------
# Running with mlcore replaced by fakes (fast); the real thing is in the worker tests
# --------------------------------------------------------------------------------------
VAL_METRICS = {"accuracy": 0.9, "auc": 0.95, "sensitivity": 0.98, "specificity": 0.8}
TEST_METRICS = {
    "accuracy": 0.88,
    "auc": 0.94,
    "sensitivity": 0.99,
    "specificity": 0.7,
    "threshold": 0.4,
    "n": 624,
}


class FakeMlcore:
    """Stands in for mlcore.train.train / mlcore.evaluate.evaluate."""

    def __init__(
        self, *, after_train=None, after_evaluate=None, version_name=None, epochs_run=None
    ):
        self.configs = []
        self.version_name = version_name
        self.after_train, self.after_evaluate = after_train, after_evaluate
        self.epochs_run = epochs_run  # fewer than asked: stopped by the time budget

    def train(self, config, on_epoch=None, should_stop=None, log=print):
        self.configs.append(config)
        self.extra_labels = {Path(p).name: label for p, label in config.extra_samples}
        self.extra_bytes = [Path(p).read_bytes() for p, _ in config.extra_samples]
        config.out.mkdir(parents=True)
        (config.out / "model.keras").write_bytes(b"fake keras")
        (config.out / "model.json").write_text(
            json.dumps(
                {
                    "version": self.version_name or config.version,
                    "threshold": 0.4,
                    "image_size": 224,
                }
            )
        )
        for name in ("training.png", "validation_roc.png", "validation_confusion.png"):
            (config.out / name).write_bytes(b"png " + name.encode())
        epochs_run = self.epochs_run or config.epochs
        for epoch in range(1, epochs_run + 1):
            on_epoch(epoch, config.epochs, {"loss": 0.5 / epoch, "val_auc": 0.9})
        log("fake training done")
        if self.after_train:
            self.after_train()
        return {
            "metrics": VAL_METRICS,
            "data": {"extra_reviewed": len(config.extra_samples)},
            "training": {"epochs_run": epochs_run},
        }

    def evaluate(self, model_dir, data_root, split="test", out=None, cache_dir=None):
        for name in ("test_roc.png", "test_confusion.png"):
            (Path(out) / name).write_bytes(b"png " + name.encode())
        if self.after_evaluate:
            self.after_evaluate()
        return {"metrics": TEST_METRICS}

    def patch(self):
        import mlcore.evaluate
        import mlcore.train
        from diagnoses import predictors

        stack = mock.patch.multiple(mlcore.train, train=self.train)
        stack2 = mock.patch.multiple(mlcore.evaluate, evaluate=self.evaluate)
        stack3 = mock.patch.object(
            predictors, "ensure_local_model_dir", lambda version: Path("/nonexistent/base")
        )
        return stack, stack2, stack3


def run_with(fake: FakeMlcore, job) -> str:
    a, b, c = fake.patch()
    with a, b, c:
        return retraining.run_job(job_id=job.pk, task_id="task-1")


@pytest.fixture
def reviewed_cases(reviewer, fake_version):
    normal = make_case(reviewer, TRAIN_NORMAL)
    reviews.record_review(case=normal, reviewer=reviewer, verdict="normal")
    pneumonia = make_case(reviewer, TRAIN_PNEUMONIA)
    reviews.record_review(case=pneumonia, reviewer=reviewer, verdict="pneumonia")
    unusable = make_case(reviewer)
    reviews.record_review(case=unusable, reviewer=reviewer, verdict="unusable")
    return normal, pneumonia


def test_a_job_registers_an_inactive_version_with_metrics_plots_and_cases(
    reviewer, fake_version, reviewed_cases, staff_var
):
    normal, pneumonia = reviewed_cases
    job = retraining.request_retraining(user=reviewer, epochs=2, enqueue=False)
    fake = FakeMlcore()

    assert run_with(fake, job) == "succeeded"

    job.refresh_from_db()
    version = job.result
    assert job.status == "succeeded" and job.finished_at >= job.started_at
    assert not version.is_active
    assert ModelVersion.objects.get(is_active=True) == fake_version
    assert (version.validation_metrics, version.test_metrics) == (VAL_METRICS, TEST_METRICS)
    assert version.threshold == 0.4 and version.name.startswith(f"ft-job{job.pk}-")
    assert set(version.trained_on_cases.all()) == {normal, pneumonia}
    assert version.metrics["base_version"] == "fake-v1"
    assert set(version.plots) == set(services.MODEL_PLOT_FILES)
    assert version.plots["test_roc"] != version.plots["validation_roc"]
    assert version.model_file.read() == b"fake keras"
    with version.model_file.storage.open(version.plots["test_roc"]) as fh:
        assert fh.read() == b"png test_roc.png"
    # training data: the originals of the reviewed cases, labelled by the current review
    config = fake.configs[0]
    assert config.init_model == Path("/nonexistent/base") and config.epochs == 2
    assert config.learning_rate == 3e-4
    assert sorted(fake.extra_labels.values()) == [0, 1]
    assert sorted(fake.extra_bytes) == sorted([normal.original.read(), pneumonia.original.read()])
    # progress, log, clean-up
    assert job.progress["epoch"] == 2 and job.progress["epochs"] == 2
    assert [h["epoch"] for h in job.progress["history"]] == [1, 2]
    assert "fake training done" in job.log_tail and "epoch 2/2" in job.log_tail
    assert not list((staff_var / "retraining").iterdir())


def test_reviewed_films_the_new_version_is_judged_on_are_left_out_of_training(
    reviewer, fake_version, reviewed_cases, staff_var
):
    """The full-size samples are test/ films, and an upload could be a validation-carve
    film: trained on, they would inflate the figures a version is chosen and reported by."""
    test_film = make_case(reviewer, PNEUMONIA_SAMPLES[0])
    reviews.record_review(case=test_film, reviewer=reviewer, verdict="pneumonia")
    carve_film = make_case(reviewer, CARVE_NORMAL)
    reviews.record_review(case=carve_film, reviewer=reviewer, verdict="normal")
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    fake = FakeMlcore()

    assert run_with(fake, job) == "succeeded"

    job.refresh_from_db()
    assert set(job.result.trained_on_cases.all()) == set(reviewed_cases)
    assert len(fake.configs[0].extra_samples) == 2
    test_name = f"test/PNEUMONIA/{PNEUMONIA_SAMPLES[0].name}"
    assert f"case {test_film.pk} left out: it is {test_name}" in job.log_tail
    carve_name = f"the validation carve's train/NORMAL/{CARVE_NORMAL.name}"
    assert f"case {carve_film.pk} left out: it is {carve_name}" in job.log_tail


def test_a_fine_tune_job_trains_within_the_time_budget_and_says_when_it_stopped_early(
    reviewer, fake_version, staff_var, settings
):
    settings.PNEUMOSITE_FINE_TUNE_TIME_BUDGET = 123
    job = retraining.request_retraining(user=reviewer, epochs=3, enqueue=False)
    fake = FakeMlcore(epochs_run=1)

    assert run_with(fake, job) == "succeeded"

    job.refresh_from_db()
    assert fake.configs[0].max_seconds == 123
    assert "stopped after 1 of 3 epochs" in job.log_tail
    assert "time budget of 123 s" in job.log_tail
    assert job.result is not None


@pytest.mark.parametrize(("mode", "budget"), [("scratch", 123), ("fine_tune", 0)])
def test_scratch_jobs_and_a_budget_of_zero_have_no_time_budget(
    reviewer, fake_version, staff_var, settings, mode, budget
):
    settings.PNEUMOSITE_FINE_TUNE_TIME_BUDGET = budget
    job = retraining.request_retraining(user=reviewer, mode=mode, epochs=2, enqueue=False)
    fake = FakeMlcore()

    assert run_with(fake, job) == "succeeded"

    job.refresh_from_db()
    assert fake.configs[0].max_seconds is None
    assert "stopped after" not in job.log_tail


def test_a_scratch_job_trains_the_shipped_recipe_on_labels(reviewer, fake_version, staff_var):
    job = retraining.request_retraining(user=reviewer, mode="scratch", enqueue=False)
    fake = FakeMlcore()

    assert run_with(fake, job) == "succeeded"

    from mlcore.recipes import SHIPPED_RECIPE

    config = fake.configs[0]
    assert config.epochs == SHIPPED_RECIPE["epochs"] == 12
    assert config.init_model is None and config.teacher is None
    assert (config.width, config.framing_views, config.max_framing_zoom) == (32, 1, 1.15)
    assert (config.crop_to_body, config.normalize_detail, config.detail_bands) == (True, True, 3)
    assert config.detail_gain == 2.0


def test_a_failing_job_registers_nothing_and_cleans_up(reviewer, fake_version, staff_var):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    before = stored(staff_var / "media")

    def boom():
        raise RuntimeError("disk on fire")

    assert run_with(FakeMlcore(after_evaluate=boom), job) == "failed"
    job.refresh_from_db()
    assert job.status == "failed" and "disk on fire" in job.error_message
    assert job.result is None and ModelVersion.objects.count() == 1
    assert stored(staff_var / "media") == before
    assert not list((staff_var / "retraining").iterdir())
    assert retraining.request_retraining(user=reviewer, enqueue=False).status == "queued"


def test_ctrl_c_cancels_the_job_cleans_up_and_still_stops(reviewer, fake_version, staff_var):
    job = retraining.request_retraining(user=reviewer, enqueue=False)

    def ctrl_c():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_with(FakeMlcore(after_train=ctrl_c), job)
    job.refresh_from_db()
    assert job.status == "cancelled" and "Interrupted" in job.error_message
    assert not list((staff_var / "retraining").iterdir())
    assert retraining.request_retraining(user=reviewer, enqueue=False).status == "queued"


def test_the_retrain_command_refuses_a_user_who_is_not_staff(django_user_model):
    from django.core.management import CommandError, call_command

    django_user_model.objects.create_user("clerk", password="x")
    with pytest.raises(CommandError, match="Only staff"):
        call_command("retrain", "--user", "clerk")
    assert not RetrainingJob.objects.exists()


def test_a_registration_failure_leaves_no_version_and_no_files(
    reviewer, fake_version, reviewed_cases, staff_var
):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    before = stored(staff_var / "media")

    # the model folder names an existing version: the INSERT fails inside the transaction
    assert run_with(FakeMlcore(version_name=fake_version.name), job) == "failed"

    job.refresh_from_db()
    assert job.status == "failed" and "IntegrityError" in job.error_message
    assert ModelVersion.objects.count() == 1 and job.result is None
    assert stored(staff_var / "media") == before  # model file and plots removed again
    assert not list((staff_var / "retraining").iterdir())


def test_cancel_requested_after_training_registers_nothing(reviewer, fake_version, staff_var):
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    before = stored(staff_var / "media")

    def cancel():
        RetrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)

    assert run_with(FakeMlcore(after_evaluate=cancel), job) == "cancelled"
    job.refresh_from_db()
    assert job.status == "cancelled" and job.result is None
    assert ModelVersion.objects.count() == 1
    assert stored(staff_var / "media") == before
    assert not list((staff_var / "retraining").iterdir())


# --------------------------------------------------------------------------------------
# Staff pages
# --------------------------------------------------------------------------------------
def test_start_page_starts_one_job_and_refuses_a_second(client, reviewer, fake_version):
    client.force_login(reviewer)
    page = client.get("/staff/retraining/")
    assert page.status_code == 200 and 'id="retraining-form"' in page.content.decode()

    response = client.post(
        "/staff/retraining/", {"mode": "fine_tune", "epochs": "2", "reviewed_since": "2024-01-31"}
    )
    job = RetrainingJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/staff/retraining/{job.pk}/"
    assert (job.epochs, str(job.reviewed_since), job.requested_by) == (2, "2024-01-31", reviewer)

    response = client.post("/staff/retraining/", {"mode": "scratch"}, follow=True)
    assert "already queued or running" in response.content.decode()
    assert RetrainingJob.objects.count() == 1


def test_job_page_status_json_and_cancel(client, reviewer, fake_version):
    client.force_login(reviewer)
    job = retraining.request_retraining(user=reviewer, epochs=4, enqueue=False)
    RetrainingJob.objects.filter(pk=job.pk).update(
        status="running",
        progress={"phase": "training", "epoch": 1, "epochs": 4, "logs": {"loss": 0.3}},
        log_tail="line 1\nline 2",
    )
    page = client.get(f"/staff/retraining/{job.pk}/").content.decode()
    assert 'id="job-progress"' in page and 'value="25"' in page and "retraining.js" in page

    data = client.get(f"/staff/retraining/{job.pk}/status.json").json()
    assert (data["status"], data["epoch"], data["epochs"], data["percent"]) == ("running", 1, 4, 25)
    assert data["logs"] == {"loss": 0.3} and data["active"] and data["log_tail"] == "line 1\nline 2"

    response = client.post(f"/staff/retraining/{job.pk}/cancel/")
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.cancel_requested and job.status == "running"
    assert client.get(f"/staff/retraining/{job.pk}/status.json").json()["cancel_requested"]


def test_staff_without_permission_cannot_start_or_cancel(client, django_user_model, fake_version):
    from fixtures.staffdata import make_user

    viewer = make_user(django_user_model, staff=True, perms=("view_retrainingjob",))
    client.force_login(viewer)
    assert 'id="retraining-form"' not in client.get("/staff/retraining/").content.decode()
    assert client.post("/staff/retraining/", {"mode": "fine_tune"}).status_code == 403
    job = RetrainingJob.objects.create(requested_by=viewer, epochs=1, status="running")
    assert client.post(f"/staff/retraining/{job.pk}/cancel/").status_code == 403
    job.refresh_from_db()
    assert not job.cancel_requested and RetrainingJob.objects.count() == 1


def test_admin_cancel_action(client, reviewer, fake_version):
    client.force_login(reviewer)
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    assert client.get("/admin/diagnoses/retrainingjob/").status_code == 200
    client.post(
        "/admin/diagnoses/retrainingjob/",
        {"action": "cancel_jobs", "_selected_action": [job.pk], "index": 0},
    )
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert client.get(f"/admin/diagnoses/retrainingjob/{job.pk}/change/").status_code == 200
