"""Business logic of the diagnoses app: cases, predictions and model versions."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from diagnoses.imaging import (
    EXTENSIONS,
    UploadRejected,
    ValidatedImage,
    display_file,
    thumbnail_jpeg,
    validate_upload,
)
from diagnoses.models import Case, ModelVersion, Prediction
from mlcore.framing import body_share
from mlcore.serialization import TRAIN_REPORT, ModelMetadata

logger = logging.getLogger(__name__)


class NoActiveModel(RuntimeError):
    pass


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------
@dataclass
class UploadOutcome:
    cases: list[Case] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (filename, message)


def upload_cases(*, files, uploaded_by, reference: str = "", note: str = "") -> UploadOutcome:
    """Validate each file on its own; a rejected file does not stop the others.

    Raises NoActiveModel (before storing anything) when no model version is active.
    """
    model_version = get_active_model_version()
    outcome = UploadOutcome()
    for uploaded in files:
        name = Path(uploaded.name or "").name
        try:
            validated = validate_upload(uploaded)
        except UploadRejected as exc:
            outcome.rejected.append((name, str(exc)))
            continue
        outcome.cases.append(
            create_case(
                validated=validated,
                original_filename=name,
                uploaded_by=uploaded_by,
                reference=reference,
                note=note,
                model_version=model_version,
            )
        )
    return outcome


def create_case(
    *,
    validated: ValidatedImage,
    original_filename: str,
    uploaded_by,
    reference: str = "",
    note: str = "",
    model_version: ModelVersion | None = None,
) -> Case:
    """Store the image and its derived images, and queue a prediction (active model by default)."""
    model_version = model_version or get_active_model_version()
    if validated.image_format == "DICOM":
        original_filename = ""  # a PACS export is often named after the patient
    case = Case(
        uploaded_by=uploaded_by,
        reference=reference.strip(),
        note=note.strip(),
        original_filename=original_filename[:255],
        sha256=validated.sha256,
        image_format=validated.image_format,
        width=validated.image.width,
        height=validated.image.height,
        body_share=body_share(validated.image),
    )
    try:
        case.original.save("original", ContentFile(validated.stored_bytes), save=False)
        display, extension = display_file(validated.image, validated.image_format)
        case.display_image.save(f"display{extension}", ContentFile(display), save=False)
        thumbnail = thumbnail_jpeg(validated.image)
        case.thumbnail.save("thumbnail.jpg", ContentFile(thumbnail), save=False)
        with transaction.atomic():
            case.save()
            queue_prediction(case=case, model_version=model_version)
    except Exception:
        delete_stored_files(case.original, case.display_image, case.thumbnail)
        raise
    return case


def delete_stored_files(*files) -> None:
    for stored in files:
        if stored and stored.name:
            _delete_quietly(stored.storage, stored.name)


def _delete_quietly(storage, name: str) -> None:
    try:
        storage.delete(name)
    except Exception:  # noqa: BLE001 - clean-up must not hide the original error
        logger.warning("could not delete %s from storage", name, exc_info=True)


# --------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------
def queue_prediction(*, case: Case, model_version: ModelVersion) -> Prediction:
    """Create a queued prediction; the task is sent once the transaction commits."""
    prediction = Prediction.objects.create(case=case, model_version=model_version)
    transaction.on_commit(lambda: send_prediction_task(prediction.pk))
    return prediction


def send_prediction_task(prediction_id: int) -> bool:
    """Send run_prediction; a broker outage leaves the prediction queued for requeueing."""
    from diagnoses.tasks import run_prediction

    try:
        run_prediction.delay(prediction_id)
    except Exception:  # noqa: BLE001 - kombu/redis raise many types when the broker is down
        logger.exception(
            "could not send run_prediction for prediction %s; it stays queued", prediction_id
        )
        return False
    Prediction.objects.filter(pk=prediction_id).update(
        last_sent_at=timezone.now(), send_count=F("send_count") + 1
    )
    return True


def rerun_prediction(*, case: Case) -> tuple[Prediction, bool]:
    """Queue a prediction with the active model unless one is already queued or running.

    Returns (prediction, created).
    """
    model_version = get_active_model_version()
    with transaction.atomic():
        Case.objects.select_for_update().filter(pk=case.pk).first()
        pending = (
            case.predictions.filter(
                model_version=model_version,
                status__in=[Prediction.Status.QUEUED, Prediction.Status.RUNNING],
            )
            .order_by("-pk")
            .first()
        )
        if pending is not None:
            return pending, False
        return queue_prediction(case=case, model_version=model_version), True


# A queued prediction is re-sent every `older_than` up to this many sends, then hourly:
# during a long worker outage the queue holds a few duplicates per upload, not hundreds.
FREQUENT_SENDS = 5
SLOW_RESEND = timedelta(hours=1)


def requeue_stale_predictions(*, older_than: timedelta) -> list[int]:
    """Re-send predictions whose message may be lost; returns their ids.

    Queued ones not sent (or last sent) more than `older_than` ago, and running ones
    started longer ago than the task's hard time limit (their worker died; the filesystem
    broker does not redeliver). Either kind is re-sent at most every `older_than`, and
    hourly after FREQUENT_SENDS sends. run_prediction is idempotent, so a duplicate
    message is harmless.
    """
    now = timezone.now()
    cutoff = now - older_than
    dead_cutoff = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    resend_due = Q(last_sent_at__lt=cutoff, send_count__lt=FREQUENT_SENDS) | Q(
        last_sent_at__lt=now - SLOW_RESEND
    )
    queued_stale = Q(status=Prediction.Status.QUEUED) & (
        Q(last_sent_at__isnull=True, queued_at__lt=cutoff) | resend_due
    )
    running_stale = Q(status=Prediction.Status.RUNNING, started_at__lt=dead_cutoff) & (
        Q(last_sent_at__isnull=True) | resend_due
    )
    stale = Prediction.objects.filter(queued_stale | running_stale).values_list("pk", flat=True)
    sent = [pk for pk in stale if send_prediction_task(pk)]
    if sent:
        logger.info("requeued %d stale predictions: %s", len(sent), sent)
    return sent


# --------------------------------------------------------------------------------------
# Model versions
# --------------------------------------------------------------------------------------
def get_active_model_version() -> ModelVersion:
    model_version = ModelVersion.objects.filter(is_active=True).first()
    if model_version is None:
        raise NoActiveModel("No model version is active; run `manage.py ensure_model`.")
    return model_version


@transaction.atomic
def activate_model_version(model_version: ModelVersion) -> ModelVersion:
    """Make `model_version` the one active version (new uploads use it)."""
    list(
        ModelVersion.objects.select_for_update().filter(Q(is_active=True) | Q(pk=model_version.pk))
    )
    ModelVersion.objects.filter(is_active=True).exclude(pk=model_version.pk).update(is_active=False)
    ModelVersion.objects.filter(pk=model_version.pk).update(is_active=True)
    model_version.is_active = True
    return model_version


MODEL_PLOT_FILES = {
    "training": "training.png",
    "validation_roc": "validation_roc.png",
    "validation_confusion": "validation_confusion.png",
    "test_roc": "test_roc.png",
    "test_confusion": "test_confusion.png",
}


def store_model_artifacts(model_version: ModelVersion, model_dir: Path) -> list[str]:
    """Save model.keras and the plots of a model folder to storage (the row is not saved).

    Returns the storage names written, so that a caller can delete them on failure.
    """
    storage = ModelVersion._meta.get_field("model_file").storage
    prefix = f"models/{model_version.name}/{uuid.uuid4().hex}"
    saved: list[str] = []
    try:
        for key, filename in MODEL_PLOT_FILES.items():
            if (model_dir / filename).is_file():
                with open(model_dir / filename, "rb") as fh:
                    model_version.plots[key] = storage.save(f"{prefix}/{filename}", File(fh))
                saved.append(model_version.plots[key])
        with open(model_dir / "model.keras", "rb") as fh:
            model_version.model_file.save("model.keras", File(fh), save=False)
        saved.append(model_version.model_file.name)
    except BaseException:
        delete_stored_names(saved)
        raise
    return saved


def delete_stored_names(names: list[str]) -> None:
    storage = ModelVersion._meta.get_field("model_file").storage
    for name in names:
        _delete_quietly(storage, name)


def _read_report(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def register_model_dir(model_dir: Path) -> ModelVersion:
    """Register a shipped model folder (model.json, model.keras, metrics and plots)."""
    trained = _read_report(model_dir / TRAIN_REPORT)
    tested = _read_report(model_dir / "test_metrics.json")
    model_version = ModelVersion.from_metadata(
        ModelMetadata.read(model_dir),
        validation_metrics=trained.get("metrics", {}),
        test_metrics=tested.get("metrics", {}),
        metrics={"data": trained.get("data", {}), "training": trained.get("training", {})},
    )
    saved = store_model_artifacts(model_version, model_dir)
    try:
        model_version.save()
    except Exception:
        delete_stored_names(saved)
        raise
    return model_version


def model_dirs(models_dir: Path) -> list[Path]:
    """Folders holding a model.json and model.keras, oldest first (by model.json mtime)."""
    if not models_dir.is_dir():
        return []
    found = [
        path
        for path in models_dir.iterdir()
        if (path / "model.json").is_file() and (path / "model.keras").is_file()
    ]
    return sorted(found, key=lambda path: ((path / "model.json").stat().st_mtime, path.name))


DEFAULT_MODEL_FILE = "DEFAULT"  # in the models folder: the name of the version to serve


def ensure_models(models_dir: Path | None = None) -> tuple[list[ModelVersion], ModelVersion | None]:
    """Register unregistered model folders; if none is active, activate the version named
    in the folder's DEFAULT file, or else the newest.

    Idempotent. Returns (newly registered versions, version activated now or None).
    """
    models_dir = Path(models_dir or settings.PNEUMOSITE_MODELS_DIR)
    known = set(ModelVersion.objects.values_list("name", flat=True))
    registered = []
    for model_dir in model_dirs(models_dir):
        name = ModelMetadata.read(model_dir).version
        if name not in known:
            registered.append(register_model_dir(model_dir))
            known.add(name)
    activated = None
    if not ModelVersion.objects.filter(is_active=True).exists():
        default_file = models_dir / DEFAULT_MODEL_FILE
        default = default_file.read_text().strip() if default_file.is_file() else ""
        chosen = (
            ModelVersion.objects.filter(name=default).first()
            or ModelVersion.objects.order_by("-created_at", "-pk").first()
        )
        if chosen is not None:
            activated = activate_model_version(chosen)
    return registered, activated


# --------------------------------------------------------------------------------------
# Running a prediction (called by tasks.run_prediction)
# --------------------------------------------------------------------------------------
MAX_PREDICTION_ATTEMPTS = 10


def claim_prediction(*, prediction_id: int, task_id: str) -> Prediction | None:
    """Mark a prediction running for this delivery, or None when it must not run.

    A conditional UPDATE, so two deliveries cannot both claim it. Claimable: queued;
    running under the same task id (a retry, or a redelivery after a worker crash);
    running for longer than the hard time limit (its worker is gone). An image that
    kills its worker every time is given up after MAX_PREDICTION_ATTEMPTS claims.
    """
    now = timezone.now()
    dead_before = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    claimed = (
        Prediction.objects.filter(pk=prediction_id)
        .filter(
            Q(status=Prediction.Status.QUEUED)
            | Q(status=Prediction.Status.RUNNING, task_id=task_id)
            | Q(status=Prediction.Status.RUNNING, started_at__lt=dead_before)
        )
        .update(
            status=Prediction.Status.RUNNING,
            started_at=now,
            task_id=task_id,
            attempts=F("attempts") + 1,
        )
    )
    if not claimed:
        return None
    prediction = Prediction.objects.select_related("case", "model_version").get(pk=prediction_id)
    if prediction.attempts > MAX_PREDICTION_ATTEMPTS:
        fail_prediction(
            prediction_id=prediction_id,
            message=(
                f"The model run was started {MAX_PREDICTION_ATTEMPTS} times without finishing "
                "(the worker stopped each time); giving up."
            ),
        )
        return None
    return prediction


# The overlay is shown scaled to the display image's box; encoding it at full film size
# would cost more time than the whole model run. JPEG, because the overlay is a picture to
# look at (the original is kept as uploaded): PNG encoding took about a third of a reading
# with its heatmap (bench/bench_inference.py, BENCHMARKS.md).
HEATMAP_MAX_SIDE = 1024
HEATMAP_FORMAT = "JPEG"


class StoredImageMissing(RuntimeError):
    """The case's original is gone from storage: the prediction cannot ever succeed."""


@dataclass(frozen=True)
class ComputedReading:
    probability: float
    label: str
    threshold: float
    inference_ms: float
    heatmap: bytes  # HEATMAP_FORMAT


def compute_reading(prediction: Prediction) -> ComputedReading:
    """Run the prediction's model version on the case's stored original (no DB writes).

    Raises mlcore.imageio.ImageDecodeError when the stored file cannot be decoded.
    """
    from diagnoses.predictors import get_predictor

    predictor = get_predictor(prediction.model_version)
    try:
        with prediction.case.original.open("rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise StoredImageMissing("The stored image file is missing.") from exc
    # The predictor decodes the bytes itself, under the site's pixel limit: a JPEG at a
    # reduced scale for the reading, whole for the overlay.
    reading, heatmap = predictor.predict_with_heatmap(
        data, max_side=HEATMAP_MAX_SIDE, image_format=HEATMAP_FORMAT
    )
    return ComputedReading(
        probability=float(reading.probability),
        label=str(reading.label),
        threshold=float(reading.threshold),
        inference_ms=float(reading.inference_ms),
        heatmap=heatmap,
    )


def save_reading(*, prediction: Prediction, task_id: str, computed: ComputedReading) -> bool:
    """Store the result if this delivery still holds the claim; False when it does not."""
    from diagnoses.models import heatmap_upload_to

    storage = Prediction._meta.get_field("heatmap").storage
    heatmap_name = storage.save(
        heatmap_upload_to(prediction, f"heatmap{EXTENSIONS[HEATMAP_FORMAT]}"),
        ContentFile(computed.heatmap),
    )
    try:
        with transaction.atomic():
            saved = Prediction.objects.filter(
                pk=prediction.pk, status=Prediction.Status.RUNNING, task_id=task_id
            ).update(
                status=Prediction.Status.DONE,
                probability=computed.probability,
                label=computed.label,
                threshold=computed.threshold,
                inference_ms=computed.inference_ms,
                heatmap=heatmap_name,
                error_message="",
                finished_at=timezone.now(),
            )
    except Exception:
        storage.delete(heatmap_name)
        raise
    if not saved:
        storage.delete(heatmap_name)
    return bool(saved)


def fail_prediction(*, prediction_id: int, message: str) -> bool:
    """Mark a not yet finished prediction failed with a message for the user."""
    return bool(
        Prediction.objects.filter(
            pk=prediction_id, status__in=[Prediction.Status.QUEUED, Prediction.Status.RUNNING]
        ).update(
            status=Prediction.Status.FAILED,
            error_message=message[:2000],
            finished_at=timezone.now(),
        )
    )
