"""Retraining: staff request a job, the "training" Celery worker runs it (tasks.run_retraining).

A job fine-tunes the active model (or trains from scratch) on the base dataset plus every
reviewed case whose current review is normal or pneumonia, evaluates the result on the
official test split and registers it as a new, INACTIVE model version. Nothing is
registered when a job fails or is cancelled: registration is one transaction at the very
end, and the job's temporary folder is always deleted. A new version is only used after a
staff member activates it (activate_version).
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from diagnoses import selectors_staff, services
from diagnoses.models import Case, ModelVersion, RetrainingJob, Review
from diagnoses.reviews import require_staff
from mlcore.recipes import SHIPPED_RECIPE
from mlcore.serialization import ModelMetadata

logger = logging.getLogger(__name__)

Mode = RetrainingJob.Mode
Status = RetrainingJob.Status

# Defaults per mode: the fine-tune recipe finishes in minutes on 2 CPU cores (BENCHMARKS.md);
# from scratch, the shipped model's recipe.
MODE_DEFAULTS = {
    Mode.FINE_TUNE: {"epochs": 3, "learning_rate": 3e-4},
    Mode.SCRATCH: {"epochs": SHIPPED_RECIPE["epochs"], "learning_rate": 2e-3},
}
MAX_EPOCHS = 200
OPTION_TYPES = {"learning_rate": float, "limit_per_class": int, "seed": int}
CANCEL_POLL_SECONDS = 2.0  # should_stop asks the database at most this often
PROGRESS_SAVE_SECONDS = 2.0  # log lines are written at most this often (epochs always)
HEARTBEAT_SECONDS = 10.0  # heartbeat_at is written at most this often while a job runs
LOG_TAIL_LINES = 200
# A killed worker process (out of memory, say) puts the job's message straight back on the
# queue; one more run is allowed (a restarted worker), then the job fails instead of
# restarting for ever and blocking every other job.
MAX_RETRAINING_ATTEMPTS = 2
# Files written by mlcore.train / mlcore.evaluate that are kept in storage.
EXPORT_EXTENSIONS = {"JPEG": ".jpeg", "PNG": ".png", "DICOM": ".dcm"}


class RetrainingRefused(Exception):
    """The request cannot be accepted (another job is active, bad parameters, ...)."""


class JobCancelled(Exception):
    """Cancellation was requested after training finished (before registration)."""


# --------------------------------------------------------------------------------------
# Requesting, cancelling, activating (web side)
# --------------------------------------------------------------------------------------
def request_retraining(
    *,
    user,
    mode: str = Mode.FINE_TUNE,
    epochs: int | None = None,
    reviewed_since: date | None = None,
    options: dict | None = None,
    enqueue: bool = True,
) -> RetrainingJob:
    """Create a queued job and send it to the training queue once committed.

    Refused (RetrainingRefused) while another job is queued or running.
    """
    require_staff(user, "diagnoses.add_retrainingjob")
    if mode not in Mode.values:
        raise RetrainingRefused(f"Unknown mode {mode!r}.")
    epochs = int(MODE_DEFAULTS[mode]["epochs"] if epochs is None else epochs)
    if not 1 <= epochs <= MAX_EPOCHS:
        raise RetrainingRefused(f"Epochs must be between 1 and {MAX_EPOCHS}.")
    options = _clean_options(options or {})
    base_version = None
    if mode == Mode.FINE_TUNE:
        try:
            base_version = services.get_active_model_version()
        except services.NoActiveModel as exc:
            raise RetrainingRefused(str(exc)) from exc
    fail_stale_jobs()
    try:
        with transaction.atomic():
            if RetrainingJob.objects.filter(status__in=RetrainingJob.ACTIVE_STATUSES).exists():
                raise RetrainingRefused("Another retraining job is already queued or running.")
            job = RetrainingJob.objects.create(
                requested_by=user,
                mode=mode,
                epochs=epochs,
                reviewed_since=reviewed_since,
                options=options,
                base_version=base_version,
                progress={"phase": "queued", "epoch": 0, "epochs": epochs},
            )
    except IntegrityError as exc:  # a concurrent request won the race (one_active_retraining_job)
        raise RetrainingRefused("Another retraining job is already queued or running.") from exc
    logger.info("retraining job %s requested by %s (%s, %d epochs)", job.pk, user.pk, mode, epochs)
    if enqueue:
        transaction.on_commit(lambda: send_retraining_task(job.pk))
    return job


def _clean_options(options: dict) -> dict:
    cleaned = {}
    for key, value in options.items():
        if value is None or value == "":
            continue
        if key not in OPTION_TYPES:
            raise RetrainingRefused(f"Unknown option {key!r}.")
        try:
            cleaned[key] = OPTION_TYPES[key](value)
        except (TypeError, ValueError) as exc:
            raise RetrainingRefused(f"Option {key} must be a number.") from exc
        if key != "seed" and cleaned[key] <= 0:
            raise RetrainingRefused(f"Option {key} must be positive.")
    return cleaned


def send_retraining_task(job_id: int) -> bool:
    """Send run_retraining; when the broker is unreachable the job fails at once (so that it
    does not block later requests)."""
    from diagnoses.tasks import run_retraining

    try:
        result = run_retraining.delay(job_id)
    except Exception as exc:  # noqa: BLE001 - kombu/redis raise many types when the broker is down
        logger.exception("could not send run_retraining for job %s", job_id)
        RetrainingJob.objects.filter(pk=job_id, status=Status.QUEUED).update(
            status=Status.FAILED,
            error_message=f"Could not queue the job (broker unreachable): {exc}"[:2000],
            finished_at=timezone.now(),
        )
        return False
    RetrainingJob.objects.filter(pk=job_id, celery_task_id="").update(celery_task_id=result.id)
    return True


def request_cancel(*, job: RetrainingJob, user) -> RetrainingJob:
    """A queued job is cancelled at once; a running one stops at the training loop's next
    check (within seconds) and ends `cancelled` with no model version."""
    require_staff(user, "diagnoses.change_retrainingjob")
    now = timezone.now()
    cancelled_queued = RetrainingJob.objects.filter(pk=job.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested=True, finished_at=now
    )
    if not cancelled_queued:
        RetrainingJob.objects.filter(pk=job.pk, status=Status.RUNNING).update(cancel_requested=True)
    logger.info("cancellation of retraining job %s requested by %s", job.pk, user.pk)
    job.refresh_from_db()
    return job


def fail_stale_jobs() -> list[int]:
    """Mark failed the running jobs that lost their worker (killed, crashed, machine gone).

    A running job writes heartbeat_at every few seconds (JobReporter); one silent for
    PNEUMOSITE_TRAINING_HEARTBEAT_TIMEOUT seconds, or running past the task's hard time
    limit, has no worker any more. Nothing was registered (registration is the job's last
    transaction). Called by the "fail-stale-retraining-jobs" periodic task and before a
    new request.
    """
    now = timezone.now()
    silent_before = now - timedelta(seconds=settings.PNEUMOSITE_TRAINING_HEARTBEAT_TIMEOUT)
    dead_before = now - timedelta(seconds=settings.PNEUMOSITE_TRAINING_TIME_LIMIT + 60)
    stale_q = (
        Q(heartbeat_at__lt=silent_before)
        | Q(heartbeat_at__isnull=True, started_at__lt=silent_before)
        | Q(started_at__lt=dead_before)
    )
    stale = list(
        RetrainingJob.objects.filter(stale_q, status=Status.RUNNING).values_list("pk", flat=True)
    )
    if stale:
        RetrainingJob.objects.filter(stale_q, pk__in=stale, status=Status.RUNNING).update(
            status=Status.FAILED,
            error_message=(
                "The worker running this job stopped (no heartbeat; killed or crashed). "
                "No model version was registered."
            ),
            finished_at=now,
        )
        logger.warning("retraining jobs %s lost their worker: marked failed", stale)
    return stale


def activate_version(*, model_version: ModelVersion, user) -> ModelVersion:
    """Make `model_version` the active one (rolling back = activating an older version).

    New uploads and re-runs use it at once; workers load it on their next prediction.
    """
    require_staff(user, "diagnoses.change_modelversion")
    services.activate_model_version(model_version)
    logger.info("model version %s activated by %s", model_version.name, user.pk)
    return model_version


# --------------------------------------------------------------------------------------
# Running a job (called by tasks.run_retraining, or manage.py retrain)
# --------------------------------------------------------------------------------------
def claim_job(*, job_id: int, task_id: str) -> RetrainingJob | None:
    """Mark a queued job running for this delivery (or re-claim it on redelivery, at most
    MAX_RETRAINING_ATTEMPTS deliveries in all)."""
    now = timezone.now()
    attempt = {"started_at": now, "heartbeat_at": now, "attempts": F("attempts") + 1}
    claimed = RetrainingJob.objects.filter(
        pk=job_id, status=Status.QUEUED, cancel_requested=False
    ).update(status=Status.RUNNING, celery_task_id=task_id, **attempt)
    if not claimed:
        claimed = RetrainingJob.objects.filter(
            pk=job_id, status=Status.RUNNING, celery_task_id=task_id
        ).update(**attempt)
    if not claimed:
        return None
    job = RetrainingJob.objects.select_related("base_version").get(pk=job_id)
    if job.attempts > MAX_RETRAINING_ATTEMPTS:
        RetrainingJob.objects.filter(pk=job_id, status=Status.RUNNING).update(
            status=Status.FAILED,
            error_message=(
                f"The job was started {job.attempts} times and its worker stopped each time "
                "(killed, e.g. for lack of memory); giving up. No model version was "
                "registered."
            ),
            finished_at=now,
        )
        logger.warning("retraining job %s lost its worker %s times: failed", job_id, job.attempts)
        return None
    return job


class JobReporter:
    """Progress, log tail and cancellation checks of one running job, throttled."""

    def __init__(self, job: RetrainingJob):
        self.job_id = job.pk
        self.lines: deque[str] = deque(job.log_tail.splitlines(), maxlen=LOG_TAIL_LINES)
        self.progress = {
            "phase": "starting",
            "epoch": 0,
            "epochs": job.epochs,
            "logs": {},
            "history": [],
        }
        self._last_poll = 0.0
        self._last_save = 0.0
        self._cancel_seen = False

    # mlcore callbacks -----------------------------------------------------------------
    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        for line in str(message).splitlines() or [""]:
            self.lines.append(f"{stamp} {line}")
        self.save()

    def on_epoch(self, epoch: int, epochs: int, logs: dict) -> None:
        rounded = {key: round(float(value), 5) for key, value in logs.items()}
        self.progress.update(epoch=epoch, epochs=epochs, logs=rounded)
        self.progress["history"].append({"epoch": epoch, **rounded})
        self.log(
            f"epoch {epoch}/{epochs}: "
            + ", ".join(f"{key} {value:.4f}" for key, value in rounded.items())
        )
        self.save(force=True)

    def should_stop(self) -> bool:
        """True once cancellation is requested, or once the job is no longer running (the
        stale-job sweeper failed it); asks the database at most every 2 s."""
        if self._cancel_seen:
            return True
        now = time.monotonic()
        if now - self._last_poll < CANCEL_POLL_SECONDS:
            return False
        self._last_poll = now
        self._cancel_seen = (
            RetrainingJob.objects.filter(pk=self.job_id)
            .filter(Q(cancel_requested=True) | ~Q(status=Status.RUNNING))
            .exists()
        )
        return self._cancel_seen

    # job side ---------------------------------------------------------------------------
    def phase(self, name: str) -> None:
        self.progress["phase"] = name
        self.log(name)
        self.save(force=True)

    def raise_if_cancelled(self) -> None:
        self._last_poll = 0.0
        if self.should_stop():
            raise JobCancelled("cancelled")

    def fields(self) -> dict:
        return {"progress": self.progress, "log_tail": "\n".join(self.lines)}

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < PROGRESS_SAVE_SECONDS:
            return
        self._last_save = now
        RetrainingJob.objects.filter(pk=self.job_id).update(**self.fields())

    def finish(self, status: str, message: str = "") -> None:
        self.progress["phase"] = status
        if message:
            self.log(message)
        RetrainingJob.objects.filter(pk=self.job_id, status=Status.RUNNING).update(
            status=status,
            error_message=message[:2000],
            finished_at=timezone.now(),
            **self.fields(),
        )


@contextmanager
def heartbeat_while_running(job_id: int, interval: float = HEARTBEAT_SECONDS):
    """Write heartbeat_at every `interval` seconds from a thread while the block runs.

    A thread, not the training callbacks: data loading, exporting reviewed cases and the
    test evaluation report no progress, and a long one must not look like a dead worker.
    """
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    RetrainingJob.objects.filter(pk=job_id, status=Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except DatabaseError:
                    logger.warning("job %s: heartbeat not written", job_id, exc_info=True)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"retraining-{job_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 10)


def run_job(*, job_id: int, task_id: str) -> str:
    """Run a job to the end: "succeeded", "failed", "cancelled" or "skipped"."""
    from celery.exceptions import SoftTimeLimitExceeded

    from mlcore.train import TrainingCancelled

    job = claim_job(job_id=job_id, task_id=task_id)
    if job is None:
        return "skipped"
    reporter = JobReporter(job)
    workdir = Path(settings.VAR_DIR) / "retraining" / f"job-{job.pk}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    # The temporary folder is removed BEFORE the job's final status is written, so that
    # an ended job never leaves files behind.
    try:
        with heartbeat_while_running(job.pk):
            version = _train_evaluate_register(job, reporter, workdir)
    except (TrainingCancelled, JobCancelled):
        status, message = Status.CANCELLED, "Cancelled; no model version was registered."
    except SoftTimeLimitExceeded:
        status, message = Status.FAILED, "The job ran past its time limit and was stopped."
    except KeyboardInterrupt:  # Ctrl-C in `manage.py retrain`: end the job, then stop
        shutil.rmtree(workdir, ignore_errors=True)
        reporter.finish(Status.CANCELLED, "Interrupted; no model version was registered.")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure ends the job as failed
        logger.exception("retraining job %s failed", job.pk)
        status, message = Status.FAILED, f"{type(exc).__name__}: {exc}"
    else:
        logger.info(
            "retraining job %s registered %s in %.0f s",
            job.pk,
            version.name,
            time.monotonic() - started,
        )
        return Status.SUCCEEDED.value
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reporter.finish(status, message)
    return status.value


def _train_evaluate_register(
    job: RetrainingJob, reporter: JobReporter, workdir: Path
) -> ModelVersion:
    from diagnoses.predictors import ensure_local_model_dir
    from mlcore.evaluate import evaluate, summary_line
    from mlcore.train import TrainConfig, train

    data_root = Path(settings.PNEUMOSITE_DATA_DIR)
    cache_dir = Path(settings.VAR_DIR) / "cache"
    workdir.mkdir(parents=True)
    reporter.phase("exporting reviewed cases")
    extra_samples, case_ids = export_reviewed_cases(
        since=job.reviewed_since, folder=workdir / "reviewed", log=reporter.log
    )
    extra_samples, case_ids = leave_out_evaluation_films(
        extra_samples, case_ids, data_root=data_root, log=reporter.log
    )
    reporter.log(f"{len(case_ids)} reviewed case(s) added to the training data")

    if job.mode == Mode.FINE_TUNE:
        # The inputs its base was trained on, and no framing views: they would decode the
        # training set a second time within the job's time budget.
        base = job.base_version
        if base is None:
            raise RuntimeError("The model version to fine-tune no longer exists.")
        config_kwargs = dict(
            init_model=ensure_local_model_dir(base),
            max_seconds=settings.PNEUMOSITE_FINE_TUNE_TIME_BUDGET or None,
            **base.metadata().preprocessing.as_settings(),
        )
        reporter.log(f"fine-tuning {base.name}")
    else:  # the shipped model's recipe, learning from labels (no teacher)
        config_kwargs = {key: value for key, value in SHIPPED_RECIPE.items() if key != "epochs"}
        reporter.log("training a new network with the shipped model's recipe")
    name = f"{'ft' if job.mode == Mode.FINE_TUNE else 'scratch'}-job{job.pk}-" + (
        timezone.now().strftime("%Y%m%d-%H%M%S")
    )
    config = TrainConfig(
        data=data_root,
        out=workdir / "model",
        version=name,
        epochs=job.epochs,
        learning_rate=job.options.get("learning_rate", MODE_DEFAULTS[job.mode]["learning_rate"]),
        seed=job.options.get("seed", 0),
        limit_per_class=job.options.get("limit_per_class"),
        cache_dir=cache_dir,
        extra_samples=extra_samples,
        **config_kwargs,
    )
    reporter.phase("training")
    train_report = train(
        config, on_epoch=reporter.on_epoch, should_stop=reporter.should_stop, log=reporter.log
    )
    reporter.raise_if_cancelled()
    epochs_run = train_report.get("training", {}).get("epochs_run", config.epochs)
    if config.max_seconds and epochs_run < config.epochs:
        reporter.log(
            f"stopped after {epochs_run} of {config.epochs} epochs: another would not have "
            f"ended within the time budget of {config.max_seconds:.0f} s "
            "(PNEUMOSITE_FINE_TUNE_TIME_BUDGET); the best epoch is kept"
        )
    reporter.phase("evaluating on the test split")
    test_report = evaluate(config.out, data_root, "test", out=config.out, cache_dir=cache_dir)
    reporter.log(f"test: {summary_line(test_report['metrics'])}")
    reporter.raise_if_cancelled()
    reporter.phase("registering")
    return register_retrained_version(
        job=job,
        model_dir=config.out,
        train_report=train_report,
        test_report=test_report,
        case_ids=case_ids,
        reporter=reporter,
        workdir=workdir,
    )


def export_reviewed_cases(
    *, since: date | None, folder: Path, log=logger.info
) -> tuple[list[tuple[str, int]], list[int]]:
    """Copy the originals of the trainable reviewed cases to `folder`.

    Returns ([(path, label 0 normal / 1 pneumonia)], [case ids]).
    """
    folder.mkdir(parents=True, exist_ok=True)
    samples, case_ids = [], []
    for case in selectors_staff.reviewed_cases_for_training(since).only(
        "pk", "original", "image_format"
    ):
        target = folder / f"case-{case.pk}{EXPORT_EXTENSIONS.get(case.image_format, '')}"
        try:
            with case.original.open("rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1024 * 1024)
        except OSError as exc:
            log(f"case {case.pk} skipped: its original cannot be read ({exc})")
            continue
        samples.append((str(target), int(case.current_verdict == Review.Verdict.PNEUMONIA)))
        case_ids.append(case.pk)
    return samples, case_ids


def leave_out_evaluation_films(
    samples: list[tuple[str, int]], case_ids: list[int], *, data_root: Path, log=logger.info
) -> tuple[list[tuple[str, int]], list[int]]:
    """Drop the reviewed films that are films of the test split or of the validation carve
    (the new version is chosen on the one and evaluated on the other), however they were
    resized or re-encoded (mlcore.duplicates)."""
    from mlcore.duplicates import SAME_FILM, closest, fingerprints

    if not samples:
        return samples, case_ids
    names, reference = _evaluation_fingerprints(str(data_root))
    best, similarity = closest(fingerprints(path for path, _ in samples), reference)
    kept_samples, kept_ids = [], []
    for sample, case_id, index, score in zip(samples, case_ids, best, similarity, strict=True):
        if score >= SAME_FILM:
            log(
                f"case {case_id} left out: it is {names[index]} (similarity {score:.4f}), "
                "a film the new version is judged on"
            )
            continue
        kept_samples.append(sample)
        kept_ids.append(case_id)
    return kept_samples, kept_ids


@functools.lru_cache(maxsize=2)
def _evaluation_fingerprints(data_root: str) -> tuple[list[str], object]:
    """Names ("test/NORMAL/x.jpeg", "validation carve: train/...") and fingerprints of the
    films a retrained version is judged on; the carve is the one mlcore.train makes."""
    from mlcore import data as datasets
    from mlcore.duplicates import fingerprints
    from mlcore.train import TrainConfig

    root = Path(data_root)
    _, carve = datasets.carve_validation(
        datasets.list_split(root, "train"),
        fraction=TrainConfig.val_fraction,
        seed=TrainConfig.split_seed,
    )
    test = [sample.path for sample in datasets.list_split(root, "test")]
    paths = test + [sample.path for sample in carve]
    names = [str(path.relative_to(root)) for path in test] + [
        f"the validation carve's {path.relative_to(root)}" for path in paths[len(test) :]
    ]
    return names, fingerprints(paths)


def register_retrained_version(
    *,
    job: RetrainingJob,
    model_dir: Path,
    train_report: dict,
    test_report: dict,
    case_ids: list[int],
    reporter: JobReporter,
    workdir: Path,
) -> ModelVersion:
    """Store the model and plots, then in ONE transaction create the (inactive) version and
    mark the job succeeded; stored files are removed again if anything fails."""
    version = ModelVersion.from_metadata(
        ModelMetadata.read(model_dir),
        is_active=False,
        validation_metrics=train_report["metrics"],
        test_metrics=test_report["metrics"],
        metrics={
            "retraining_job": job.pk,
            "mode": job.mode,
            "base_version": job.base_version.name if job.base_version else None,
            "data": train_report.get("data", {}),
            "training": train_report.get("training", {}),
        },
    )
    saved = services.store_model_artifacts(version, model_dir)
    try:
        reporter.log(f"registering model version {version.name} (inactive)")
        reporter.progress["phase"] = Status.SUCCEEDED
        shutil.rmtree(workdir, ignore_errors=True)  # everything needed is in storage now
        with transaction.atomic():
            locked = RetrainingJob.objects.select_for_update().get(pk=job.pk)
            if locked.cancel_requested or locked.status != Status.RUNNING:
                raise JobCancelled("cancelled before registration")
            version.save()
            version.trained_on_cases.set(Case.objects.filter(pk__in=case_ids))
            RetrainingJob.objects.filter(pk=job.pk).update(
                status=Status.SUCCEEDED,
                result=version,
                finished_at=timezone.now(),
                error_message="",
                **reporter.fields(),
            )
    except BaseException:
        services.delete_stored_names(saved)
        raise
    return version
