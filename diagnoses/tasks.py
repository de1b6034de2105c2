"""Celery tasks of the diagnoses app.

`run_prediction` goes to the "inference" queue and `run_retraining` (another issue) to
"training"; both are routed by name in settings.CELERY_TASK_ROUTES.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import timedelta
from pathlib import Path

from celery import current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError

from diagnoses import services
from diagnoses.warmup import should_warm, warm_in_background
from mlcore.imageio import ImageDecodeError

logger = logging.getLogger(__name__)

PREDICTION_MAX_RETRIES = 5
REQUEUE_STALE_AFTER_SECONDS = 120


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        OperationalError,
        InterfaceError,
        ConnectionError,
        TimeoutError,
    ]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # pragma: no cover - botocore comes with django-storages[s3]
        pass
    return tuple(errors)


TRANSIENT_ERRORS = _transient_errors()


@worker_process_init.connect
def warm_new_pool_process(**kwargs) -> None:
    """Each new pool process of an inference worker loads the active model in the background."""
    if should_warm(current_app.amqp.queues.consume_from, settings.PNEUMOSITE_WARM_WORKER):
        warm_in_background()


@shared_task(name="diagnoses.tasks.ping")
def ping(path: str | None = None, text: str = "pong") -> str:
    """Health-check task. When `path` is given, writes `text` to it atomically."""
    if path:
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    return text


# Results live in the database, never in Celery's result backend: ignore_result=True also
# keeps .delay() from first subscribing to the (Redis) result backend, which with Redis
# down blocked an upload for ~20 s of reconnect retries before the send failed.
@shared_task(
    bind=True,
    name="diagnoses.tasks.run_prediction",
    max_retries=PREDICTION_MAX_RETRIES,
    ignore_result=True,
)
def run_prediction(self, prediction_id: int) -> str:
    """Compute one prediction. Idempotent: a finished prediction is never recomputed."""
    task_id = self.request.id or f"direct-{uuid.uuid4().hex}"
    try:
        prediction = services.claim_prediction(prediction_id=prediction_id, task_id=task_id)
        if prediction is None:
            return "skipped"
        computed = services.compute_reading(prediction)
        saved = services.save_reading(prediction=prediction, task_id=task_id, computed=computed)
        return "done" if saved else "superseded"
    except ImageDecodeError as exc:
        services.fail_prediction(prediction_id=prediction_id, message=str(exc))
        return "failed"
    except services.StoredImageMissing as exc:
        services.fail_prediction(prediction_id=prediction_id, message=str(exc))
        return "failed"
    except TRANSIENT_ERRORS as exc:
        if self.request.retries >= self.max_retries:
            logger.exception(
                "prediction %s: giving up after %d retries", prediction_id, self.max_retries
            )
            _fail_quietly(
                prediction_id, f"Temporary error persisted after {self.max_retries} retries: {exc}"
            )
            return "failed"
        countdown = 2 ** (self.request.retries + 1)
        logger.warning(
            "prediction %s: transient error, retry in %ss: %r", prediction_id, countdown, exc
        )
        raise self.retry(exc=exc, countdown=countdown) from exc
    except SoftTimeLimitExceeded:
        _fail_quietly(prediction_id, "The prediction took too long and was stopped.")
        return "failed"
    except DatabaseError:
        logger.exception("prediction %s: database error", prediction_id)
        _fail_quietly(prediction_id, "Internal error while saving the prediction.")
        return "failed"
    except Exception:
        logger.exception("prediction %s failed", prediction_id)
        _fail_quietly(prediction_id, "Internal error while running the model.")
        return "failed"


def _fail_quietly(prediction_id: int, message: str) -> None:
    try:
        services.fail_prediction(prediction_id=prediction_id, message=message)
    except Exception:  # noqa: BLE001 - the DB may be what is failing; beat requeues it later
        logger.exception("prediction %s: could not record the failure", prediction_id)


@shared_task(name="diagnoses.tasks.requeue_stale_predictions", ignore_result=True)
def requeue_stale_predictions(older_than_seconds: int = REQUEUE_STALE_AFTER_SECONDS) -> list[int]:
    return services.requeue_stale_predictions(older_than=timedelta(seconds=older_than_seconds))


@shared_task(name="diagnoses.tasks.fail_stale_retraining_jobs", ignore_result=True)
def fail_stale_retraining_jobs() -> list[int]:
    """Periodic: running retraining jobs whose worker died (no heartbeat) end failed."""
    from diagnoses import retraining

    return retraining.fail_stale_jobs()


@shared_task(bind=True, name="diagnoses.tasks.run_retraining", ignore_result=True)
def run_retraining(self, job_id: int) -> str:
    """Run one retraining job (diagnoses/retraining.py) on the "training" queue."""
    from diagnoses import retraining

    task_id = self.request.id or f"direct-{uuid.uuid4().hex}"
    return retraining.run_job(job_id=job_id, task_id=task_id)
