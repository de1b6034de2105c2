"""Fault injection with real processes: nothing is lost and nothing is done twice.

- An inference worker is SIGKILLed (main process and pool child) while it computes a
  prediction; after a new worker starts, Redis redelivers the unacknowledged message and
  the prediction completes once (one done result, one heatmap file).
- The broker (a redis-server this test owns, killed after the worker connected) is down
  when a user uploads: the upload still succeeds, fast, and the prediction stays queued;
  once Redis is back, the stale-prediction sweeper (`manage.py requeue_stale_predictions`)
  sends it and the worker, reconnected by itself, completes it.
- The database drops the worker's connections and refuses new ones (what a PostgreSQL
  restart looks like to a client), between upload and task and in the middle of a task:
  the task retries and completes once.
- A retraining worker is SIGKILLed mid-training: the heartbeat sweeper marks the job
  failed with a reason, no model version is registered, the active one is unchanged.

tests/faulthooks.py (loaded into a worker with `--include faulthooks`, test-only) holds a
prediction between its claim and its result so that the faults hit "the middle".
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO_ROOT, BrokerConfig, _libpq_url, require_service, wait_for
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from fixtures.casedata import NORMAL_SAMPLE, PNEUMONIA_SAMPLE, worker_env
from stackkit import free_port

from diagnoses.models import Case, Prediction

pytest_plugins = ["fixtures.casekit", "fixtures.staffkit"]

TESTS_DIR = Path(__file__).resolve().parent
VISIBILITY_TIMEOUT = 2  # seconds, for the worker that picks up a killed worker's message
TIMEOUT = 90  # a fresh worker imports TensorFlow and loads the model on first use


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def start_worker(factory, broker, var_dir, *, fault_dir: Path | None = None, **env: str):
    extra_env = {
        **worker_env(var_dir),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)]),
        **env,
    }
    extra_args: tuple[str, ...] = ()
    if fault_dir is not None:
        extra_env["PNEUMOSITE_FAULT_DIR"] = str(fault_dir)
        extra_args = ("--include", "faulthooks")
    return factory(broker, queues=("inference",), extra_env=extra_env, extra_args=extra_args)


def upload(client, path, reference: str) -> Case:
    response = client.post(
        "/upload/",
        {"files": [SimpleUploadedFile(path.name, path.read_bytes())], "reference": reference},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    return Case.objects.get(reference=reference)


def wait_done(prediction: Prediction, worker, timeout: float = TIMEOUT) -> Prediction:
    def finished():
        prediction.refresh_from_db()
        return prediction.status in (Prediction.Status.DONE, Prediction.Status.FAILED)

    wait_for(
        finished,
        timeout=timeout,
        interval=0.2,
        message=f"prediction {prediction.pk} not finished:\n{worker.log_text()[-5000:]}",
    )
    assert prediction.status == Prediction.Status.DONE, prediction.error_message
    return prediction


def heatmap_files(media_dir: Path) -> list[Path]:
    folder = media_dir / "predictions" / "heatmap"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def assert_done_exactly_once(case: Case, media_dir: Path) -> Prediction:
    (prediction,) = Prediction.objects.filter(case=case)  # one prediction, not two
    assert prediction.status == Prediction.Status.DONE
    assert prediction.label in {"normal", "pneumonia"} and 0 <= prediction.probability <= 1
    assert prediction.heatmap and prediction.heatmap.storage.exists(prediction.heatmap.name)
    return prediction


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# --------------------------------------------------------------------------------------
# Worker killed in the middle of an inference task
# --------------------------------------------------------------------------------------
@pytest.mark.services
@pytest.mark.worker
@pytest.mark.slow
def test_worker_killed_mid_prediction_is_redelivered_and_completes_once(
    celery_worker_factory, redis_broker, var_dir, media_dir, active_model, staff_client, tmp_path
):
    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "hold").touch()
    first = start_worker(celery_worker_factory, redis_broker, var_dir, fault_dir=fault)

    case = upload(staff_client, PNEUMONIA_SAMPLE, "killed-worker")
    prediction = case.predictions.get()
    marker = fault / f"computing-{prediction.pk}"
    wait_for(marker.exists, TIMEOUT, message=f"task not started:\n{first.log_text()[-3000:]}")
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.RUNNING and prediction.task_id
    claimed_by = prediction.task_id

    pool_child = int(marker.read_text())
    first.kill()  # SIGKILL to the worker's process group: main process and pool child
    wait_for(lambda: process_gone(pool_child) and not first.is_alive(), 10)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.RUNNING  # nobody finished it
    assert heatmap_files(media_dir) == []

    # A new worker (no hook). The killed one never acknowledged the message; Redis hands it
    # out again once it has been unacknowledged for longer than the visibility timeout.
    # kombu looks for such messages when a worker starts polling, then only every ~100 s:
    # let the message get older than the (test-sized) timeout first.
    time.sleep(VISIBILITY_TIMEOUT + 1)
    second = start_worker(
        celery_worker_factory,
        redis_broker,
        var_dir,
        PNEUMOSITE_BROKER_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
    )
    wait_done(prediction, second)
    done = assert_done_exactly_once(case, media_dir)
    assert done.task_id == claimed_by  # the same message, redelivered (not a new send)
    assert heatmap_files(media_dir) == [media_dir / done.heatmap.name]
    assert "succeeded" in second.log_text()


# --------------------------------------------------------------------------------------
# Broker down while a user uploads
# --------------------------------------------------------------------------------------
class ThrowawayRedis:
    """A redis-server on a fixed loopback port that the test starts and stops."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                shutil.which("redis-server"),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def answers():
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_for(answers, 20, message="redis-server did not start")
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.mark.services
@pytest.mark.worker
@pytest.mark.slow
def test_upload_while_the_broker_is_down_is_sent_by_the_sweeper_once_redis_is_back(
    celery_worker_factory,
    var_dir,
    media_dir,
    active_model,
    staff_client,
    tmp_path,
):
    from django.conf import settings

    require_service("redis-server", bool(shutil.which("redis-server")), "not installed")
    server = ThrowawayRedis(tmp_path)
    broker = BrokerConfig(
        url=server.url,
        transport_options={
            "visibility_timeout": settings.PNEUMOSITE_TRAINING_TIME_LIMIT + 3600,
        },
        result_backend=server.url,  # as in production: results configured on Redis
        env={
            "CELERY_BROKER_URL": server.url,
            "REDIS_URL": server.url,
            "CELERY_RESULT_BACKEND": server.url,
            "PNEUMOSITE_BROKER_KEY_PREFIX": "",
        },
    )
    server.start()
    try:
        # The worker (and, through the fixture, this process's Celery app) uses it ...
        worker = start_worker(celery_worker_factory, broker, var_dir)
        server.stop()  # ... then Redis dies.

        started = time.monotonic()
        case = upload(staff_client, NORMAL_SAMPLE, "broker-down")
        elapsed = time.monotonic() - started
        prediction = case.predictions.get()
        assert prediction.status == Prediction.Status.QUEUED and prediction.last_sent_at is None
        assert case.original.storage.exists(case.original.name)
        # Not a benchmark: the send must fail fast rather than hold the request through
        # the result backend's 20 reconnect attempts (~20 s; gunicorn allows 60 s).
        assert elapsed < 10, f"upload took {elapsed:.1f}s with the broker down"

        server.start()  # Redis is back (empty: the message was never sent)
        prediction.refresh_from_db()
        assert prediction.status == Prediction.Status.QUEUED  # nothing sent it

        out = io.StringIO()
        call_command("requeue_stale_predictions", "--older-than", "0", stdout=out)
        assert out.getvalue().strip() == "Requeued 1 prediction(s)"
        wait_done(prediction, worker)  # the worker reconnected by itself
        done = assert_done_exactly_once(case, media_dir)
        assert done.last_sent_at is not None

        # The web side reconnects by itself too: the next upload is sent at once.
        later = upload(staff_client, PNEUMONIA_SAMPLE, "broker-back")
        wait_done(later.predictions.get(), worker)
        assert_done_exactly_once(later, media_dir)

        out = io.StringIO()
        call_command("requeue_stale_predictions", "--older-than", "0", stdout=out)
        assert out.getvalue().strip() == "Requeued 0 prediction(s)"  # done ones stay done
        assert len(heatmap_files(media_dir)) == 2
        worker.stop()
    finally:
        server.stop()


# --------------------------------------------------------------------------------------
# The database goes away (connections dropped, new ones refused) and comes back
# --------------------------------------------------------------------------------------
class DatabaseOutage:
    """Drops every other connection to the test database and refuses new ones.

    Uses a control connection to the server's original database (DATABASE_URL), so this
    process keeps working. ALLOW_CONNECTIONS needs the database owner (the test role
    created the test database) and pg_terminate_backend the same role: no superuser.
    """

    def __init__(self, database_url: str, test_db: str, own_backend_pid: int):
        import psycopg2

        self.control = psycopg2.connect(_libpq_url(database_url), connect_timeout=5)
        self.control.autocommit = True
        self.test_db = test_db
        self.own_backend_pid = own_backend_pid

    def _execute(self, sql: str, *params):
        with self.control.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def drop_connections(self) -> int:
        rows = self._execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> %s AND pid <> pg_backend_pid()",
            self.test_db,
            self.own_backend_pid,
        )
        return sum(1 for (terminated,) in rows if terminated)

    def refuse_connections(self, refuse: bool) -> None:
        from psycopg2 import sql

        self.control.cursor().execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(self.test_db), sql.Literal(not refuse)
            )
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.refuse_connections(False)
        self.control.close()


@pytest.mark.services
@pytest.mark.worker
@pytest.mark.slow
def test_database_outage_between_upload_and_task_and_mid_task_retries_and_completes_once(
    celery_worker_factory,
    redis_broker,
    postgres_url,
    var_dir,
    media_dir,
    active_model,
    staff_client,
    tmp_path,
):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (own_pid,) = cursor.fetchone()
    outage = DatabaseOutage(postgres_url, connection.settings_dict["NAME"], own_pid)
    fault = tmp_path / "fault"
    fault.mkdir()
    try:
        worker = start_worker(celery_worker_factory, redis_broker, var_dir, fault_dir=fault)

        # 1. The database goes down after the upload committed, before the task runs.
        outage.refuse_connections(True)
        outage.drop_connections()
        case = upload(staff_client, NORMAL_SAMPLE, "db-down-before-task")
        prediction = case.predictions.get()
        worker.wait_for_log(f"prediction {prediction.pk}: transient error, retry in", TIMEOUT)
        prediction.refresh_from_db()
        assert prediction.status == Prediction.Status.QUEUED  # the claim never got through
        outage.refuse_connections(False)
        wait_done(prediction, worker)
        assert_done_exactly_once(case, media_dir)

        # 2. The worker's connection dies while it computes (after the claim, before the
        #    result is saved): the save fails, its heatmap is removed, the retry re-claims.
        (fault / "hold").touch()
        case = upload(staff_client, PNEUMONIA_SAMPLE, "db-down-mid-task")
        prediction = case.predictions.get()
        wait_for((fault / f"computing-{prediction.pk}").exists, TIMEOUT)
        prediction.refresh_from_db()
        assert prediction.status == Prediction.Status.RUNNING
        assert outage.drop_connections() >= 1  # the worker's persistent connection
        (fault / "hold").unlink()
        wait_done(prediction, worker)
        done = assert_done_exactly_once(case, media_dir)
        log = worker.log_text()
        assert f"prediction {prediction.pk}: transient error, retry in" in log, log[-3000:]
        assert len(heatmap_files(media_dir)) == 2  # the failed save left no orphan file
        assert media_dir / done.heatmap.name in heatmap_files(media_dir)
    finally:
        outage.close()


# --------------------------------------------------------------------------------------
# Retraining worker killed
# --------------------------------------------------------------------------------------
@pytest.mark.worker
@pytest.mark.slow
def test_retraining_worker_killed_job_fails_with_a_reason_and_registers_nothing(
    celery_worker_factory, filesystem_broker, staff_var, reviewer, real_version, settings
):
    from fixtures.staffdata import worker_env as staff_worker_env

    from diagnoses import retraining
    from diagnoses.models import ModelVersion, RetrainingJob
    from diagnoses.tasks import fail_stale_retraining_jobs

    trainer = celery_worker_factory(
        filesystem_broker, queues=("training",), extra_env=staff_worker_env(staff_var)
    )
    media = staff_var / "media"
    stored_before = sorted(p for p in media.rglob("*") if p.is_file())
    # far more epochs than the test waits for: only the kill ends it
    job = retraining.request_retraining(user=reviewer, epochs=200, options={"limit_per_class": 8})

    def training_with_heartbeat():
        job.refresh_from_db()
        return (job.progress.get("epoch") or 0) >= 1 and job.heartbeat_at > job.started_at

    wait_for(training_with_heartbeat, 150, message=f"no heartbeat:\n{trainer.log_text()[-3000:]}")
    # While the worker lives, its heartbeat is fresh: the sweeper leaves the job alone.
    settings.PNEUMOSITE_TRAINING_HEARTBEAT_TIMEOUT = 30
    assert fail_stale_retraining_jobs() == []

    trainer.kill()
    job.refresh_from_db()
    assert job.status == RetrainingJob.Status.RUNNING  # nothing else notices the death
    settings.PNEUMOSITE_TRAINING_HEARTBEAT_TIMEOUT = 2
    assert wait_for(fail_stale_retraining_jobs, 30, interval=0.5) == [job.pk]

    job.refresh_from_db()
    assert job.status == RetrainingJob.Status.FAILED and job.finished_at is not None
    assert "worker" in job.error_message and "No model version" in job.error_message
    assert job.result is None
    assert list(ModelVersion.objects.all()) == [real_version]
    assert ModelVersion.objects.get(is_active=True) == real_version
    stored_after = sorted(p for p in media.rglob("*") if p.is_file())
    new_files = set(stored_after) - set(stored_before)
    assert all("models" not in p.relative_to(media).parts for p in new_files), new_files
    # The one-active-job lock is released: a new request is accepted.
    again = retraining.request_retraining(user=reviewer, epochs=1, enqueue=False)
    assert again.status == RetrainingJob.Status.QUEUED


@pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection
def test_heartbeat_sweeper_spares_live_jobs_and_fails_silent_ones(reviewer, fake_version, settings):
    """Unit level: heartbeat_at decides, the claim and the heartbeat thread write it, and a
    job the sweeper failed stops training at its next poll."""
    from datetime import timedelta

    from django.utils import timezone

    from diagnoses import retraining
    from diagnoses.models import RetrainingJob

    settings.PNEUMOSITE_TRAINING_HEARTBEAT_TIMEOUT = 60
    job = retraining.request_retraining(user=reviewer, enqueue=False)
    job = retraining.claim_job(job_id=job.pk, task_id=f"t-{uuid.uuid4().hex}")
    assert job.heartbeat_at is not None
    assert retraining.fail_stale_jobs() == []

    stale = timezone.now() - timedelta(seconds=59)
    RetrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=stale)
    with retraining.heartbeat_while_running(job.pk, interval=0.05):
        fresh = stale + timedelta(seconds=30)
        wait_for(
            lambda: RetrainingJob.objects.get(pk=job.pk).heartbeat_at > fresh,
            10,
            message="the heartbeat thread wrote nothing",
        )
    assert retraining.fail_stale_jobs() == []

    reporter = retraining.JobReporter(job)
    assert reporter.should_stop() is False
    RetrainingJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=61)
    )
    assert retraining.fail_stale_jobs() == [job.pk]
    job.refresh_from_db()
    assert job.status == RetrainingJob.Status.FAILED and "heartbeat" in job.error_message
    reporter._last_poll -= retraining.CANCEL_POLL_SECONDS
    assert reporter.should_stop() is True  # a job failed by the sweeper stops training
