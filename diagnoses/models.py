"""Cases (uploaded X-rays), their predictions, model versions and clinician reviews."""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from mlcore.framing import is_unusually_framed
from mlcore.preprocess import NORMALIZATIONS, Preprocessing
from mlcore.serialization import ModelMetadata


def _random_path(prefix: str, extension: str) -> str:
    # Never derived from the user's filename: it may contain patient names, and storage
    # paths end up in logs and object-store listings.
    return f"{prefix}/{uuid.uuid4().hex}{extension}"


def original_upload_to(instance: Case, filename: str) -> str:
    return _random_path("cases/original", "")


def _random_image_path(prefix: str, filename: str) -> str:
    """A derived image's path; its extension comes from the name services give, never from
    the user, and says how the file is served (image/jpeg or image/png)."""
    suffix = PurePosixPath(filename).suffix
    if suffix not in (".jpg", ".png"):
        raise ValueError(f"a derived image is stored as .jpg or .png, not {filename!r}")
    return _random_path(prefix, suffix)


def display_upload_to(instance: Case, filename: str) -> str:
    return _random_image_path("cases/display", filename)


def thumbnail_upload_to(instance: Case, filename: str) -> str:
    return _random_path("cases/thumbnail", ".jpg")


def heatmap_upload_to(instance: Prediction, filename: str) -> str:
    return _random_image_path("predictions/heatmap", filename)


def model_file_upload_to(instance: ModelVersion, filename: str) -> str:
    return f"models/{instance.name}/{uuid.uuid4().hex}/model.keras"


class ModelVersion(models.Model):
    name = models.CharField(max_length=100, unique=True)
    model_file = models.FileField(upload_to=model_file_upload_to, max_length=300)
    threshold = models.FloatField()
    image_size = models.PositiveIntegerField()
    # How inputs are prepared (mlcore.preprocess.Preprocessing); defaults = the first models.
    normalization = models.CharField(
        max_length=20, default="equalize", choices=[(name, name) for name in NORMALIZATIONS]
    )
    crop_to_body = models.BooleanField(default=False)
    normalize_detail = models.BooleanField(default=False)
    detail_bands = models.PositiveSmallIntegerField(default=1)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    is_active = models.BooleanField(default=False)
    # Added for retraining (diagnoses/retraining.py): validation metrics (patient-wise carve
    # of train/), metrics on the official test split, storage names of the plots
    # ({"test_roc": "models/...png", ...}) and the reviewed cases the version learnt from.
    validation_metrics = models.JSONField(default=dict, blank=True)
    test_metrics = models.JSONField(default=dict, blank=True)
    plots = models.JSONField(default=dict, blank=True)
    trained_on_cases = models.ManyToManyField(
        "Case", blank=True, related_name="trained_model_versions"
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"],
                condition=Q(is_active=True),
                name="one_active_model_version",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_metadata(cls, metadata: ModelMetadata, **fields) -> ModelVersion:
        """An unsaved version described by a model folder's model.json."""
        return cls(
            name=metadata.version,
            threshold=metadata.threshold,
            **metadata.preprocessing.as_settings(),
            **fields,
        )

    def metadata(self) -> ModelMetadata:
        """The model.json this version's model.keras needs to be served as it was trained."""
        preprocessing = Preprocessing.from_settings(
            {name: getattr(self, name) for name in Preprocessing.SETTING_NAMES}
        )
        return ModelMetadata(self.name, self.threshold, preprocessing)


class Case(models.Model):
    class ImageFormat(models.TextChoices):
        JPEG = "JPEG", "JPEG"
        PNG = "PNG", "PNG"
        DICOM = "DICOM", "DICOM"

    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="uploaded_cases"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    reference = models.CharField(max_length=100, blank=True, db_index=True)
    note = models.TextField(blank=True)

    original = models.FileField(upload_to=original_upload_to, max_length=300)
    original_filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True)
    image_format = models.CharField(max_length=8, choices=ImageFormat.choices)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    # Share of the film the patient fills (mlcore.framing); null for cases uploaded before.
    body_share = models.FloatField(null=True, blank=True)
    display_image = models.FileField(upload_to=display_upload_to, max_length=300)
    thumbnail = models.FileField(upload_to=thumbnail_upload_to, max_length=300)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"Case {self.pk}" + (f" ({self.reference})" if self.reference else "")

    @property
    def is_unusually_framed(self) -> bool:
        return self.body_share is not None and is_unusually_framed(self.body_share)


class Prediction(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Label(models.TextChoices):
        PNEUMONIA = "pneumonia", "Pneumonia"
        NORMAL = "normal", "Normal"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="predictions"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    probability = models.FloatField(null=True, blank=True)
    label = models.CharField(max_length=10, choices=Label.choices, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    heatmap = models.FileField(upload_to=heatmap_upload_to, max_length=300, blank=True)
    error_message = models.TextField(blank=True)
    # Celery task id of the delivery that claimed this prediction (see tasks.run_prediction).
    task_id = models.CharField(max_length=64, blank=True)
    queued_at = models.DateTimeField(auto_now_add=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    # Bounds on crash loops and on duplicate messages (services.claim_prediction and
    # services.requeue_stale_predictions).
    send_count = models.PositiveSmallIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    inference_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-queued_at", "-pk"]
        indexes = [
            models.Index(
                fields=["case", "status", "finished_at"], name="prediction_case_status_fin"
            ),
            models.Index(fields=["status", "queued_at"], name="prediction_status_queued"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(probability__isnull=True)
                | Q(probability__gte=0.0, probability__lte=1.0),
                name="prediction_probability_0_1",
            ),
            models.CheckConstraint(
                condition=~Q(status="done") | Q(probability__isnull=False),
                name="prediction_done_has_probability",
            ),
        ]

    def __str__(self) -> str:
        return f"Prediction {self.pk} of case {self.case_id} ({self.status})"

    @property
    def is_pending(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)


class Review(models.Model):
    class Verdict(models.TextChoices):
        NORMAL = "normal", "Normal"
        PNEUMONIA = "pneumonia", "Pneumonia"
        UNUSABLE = "unusable", "Unusable"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews"
    )
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        # The newest review of a case is its current one.
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["case", "-created_at"], name="review_case_created")]

    def __str__(self) -> str:
        return f"Review {self.pk} of case {self.case_id}: {self.verdict}"


class RetrainingJob(models.Model):
    """One retraining run (diagnoses/retraining.py); at most one is queued or running."""

    class Mode(models.TextChoices):
        FINE_TUNE = "fine_tune", "Fine-tune the active model"
        SCRATCH = "scratch", "Train from scratch"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="retraining_jobs"
    )
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.FINE_TUNE)
    epochs = models.PositiveIntegerField()
    reviewed_since = models.DateField(
        null=True, blank=True, help_text="Only reviews made on or after this date."
    )
    # Further training options (learning_rate, limit_per_class for smoke runs, ...).
    options = models.JSONField(default=dict, blank=True)
    base_version = models.ForeignKey(
        ModelVersion,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="fine_tune_jobs",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # {"phase": ..., "epoch": i, "epochs": n, "logs": {...}, "history": [...]}
    progress = models.JSONField(default=dict, blank=True)
    log_tail = models.TextField(blank=True)
    error_message = models.TextField(blank=True)
    result = models.ForeignKey(
        ModelVersion,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="retraining_jobs",
    )
    cancel_requested = models.BooleanField(default=False)
    celery_task_id = models.CharField(max_length=64, blank=True)
    # Deliveries that claimed the job: more than one means its worker was lost mid-run.
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Written every few seconds by the running job; a stale one means its worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            # At most one job waits or runs at a time (a second request is refused).
            models.UniqueConstraint(
                models.Value(1),
                condition=Q(status__in=["queued", "running"]),
                name="one_active_retraining_job",
            ),
            models.CheckConstraint(
                condition=~Q(status="succeeded") | Q(result__isnull=False),
                name="retraining_succeeded_has_result",
            ),
        ]

    def __str__(self) -> str:
        return f"Retraining job {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES


class ReviewQueueCase(Case):
    """Admin "Review queue": unreviewed cases, the least certain readings first."""

    class Meta:
        proxy = True
        verbose_name = "review queue case"
        verbose_name_plural = "review queue"


class SignInFailure(models.Model):
    """One failed sign-in, kept for diagnoses.signin's lockout window."""

    username = models.CharField(max_length=150, db_index=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-at"]
        verbose_name = "sign-in failure"

    def __str__(self) -> str:
        return f"{self.username} at {self.at:%Y-%m-%d %H:%M:%S}"
