"""Queries behind the staff tools: case review, agreement statistics, retraining."""

from __future__ import annotations

from datetime import date

from django.db import models as m
from django.db.models import (
    CharField,
    F,
    FloatField,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Abs

from diagnoses.models import Case, ModelVersion, Prediction, RetrainingJob, Review
from diagnoses.selectors import cases_with_summary

TRAINABLE_VERDICTS = (Review.Verdict.NORMAL, Review.Verdict.PNEUMONIA)


class Agreement:
    AGREE = "agree"
    DISAGREE = "disagree"
    UNUSABLE = "unusable"
    NO_READING = "no_reading"
    CHOICES = [
        (AGREE, "Agree"),
        (DISAGREE, "Disagree"),
        (UNUSABLE, "Unusable image"),
        (NO_READING, "No reading"),
    ]


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------
def cases_for_review() -> QuerySet[Case]:
    """cases_with_summary() plus the reading's threshold, its distance from the threshold,
    the current review's reviewer/date and the agreement model vs reviewer.

    Still one query for any number of rows (correlated subqueries).
    """
    latest_done = Prediction.objects.filter(
        case=OuterRef("pk"), status=Prediction.Status.DONE
    ).order_by("-finished_at", "-pk")
    newest_review = Review.objects.filter(case=OuterRef("pk")).order_by("-created_at", "-pk")
    return cases_with_summary().annotate(
        reading_threshold=Subquery(latest_done.values("threshold")[:1]),
        threshold_distance=Abs(
            F("reading_probability") - F("reading_threshold"), output_field=FloatField()
        ),
        review_reviewer=Subquery(newest_review.values("reviewer__username")[:1]),
        review_created_at=Subquery(newest_review.values("created_at")[:1]),
        agreement=m.Case(
            When(review_verdict__isnull=True, then=Value(None)),
            When(review_verdict=Review.Verdict.UNUSABLE, then=Value(Agreement.UNUSABLE)),
            When(reading_label__isnull=True, then=Value(Agreement.NO_READING)),
            When(review_verdict=F("reading_label"), then=Value(Agreement.AGREE)),
            default=Value(Agreement.DISAGREE),
            output_field=CharField(),
        ),
    )


def review_queue() -> QuerySet[Case]:
    """Unreviewed cases with a reading, the one closest to its threshold first."""
    return (
        cases_for_review()
        .filter(review_verdict__isnull=True, reading_probability__isnull=False)
        .order_by("threshold_distance", "created_at", "pk")
    )


def case_reviews(case: Case) -> QuerySet[Review]:
    return case.reviews.select_related("reviewer").order_by("-created_at", "-pk")


def model_version_names() -> list[str]:
    return list(ModelVersion.objects.order_by("-created_at", "-pk").values_list("name", flat=True))


# --------------------------------------------------------------------------------------
# Agreement statistics
# --------------------------------------------------------------------------------------
def _empty_stats(name: str) -> dict:
    return {
        "model_version": name,
        "reviewed": 0,  # normal/pneumonia verdicts compared with a reading
        "unusable": 0,
        "agree": 0,
        "agreement_rate": None,
        # rows: reviewer [normal, pneumonia]; cols: model [normal, pneumonia]
        "matrix": [[0, 0], [0, 0]],
    }


def _count(stats: dict, reading: str, verdict: str) -> None:
    if verdict == Review.Verdict.UNUSABLE:
        stats["unusable"] += 1
        return
    row = 1 if verdict == Review.Verdict.PNEUMONIA else 0
    col = 1 if reading == Prediction.Label.PNEUMONIA else 0
    stats["matrix"][row][col] += 1
    stats["reviewed"] += 1
    stats["agree"] += int(row == col)


def _finish(stats: dict) -> dict:
    if stats["reviewed"]:
        stats["agreement_rate"] = stats["agree"] / stats["reviewed"]
    return stats


def agreement_statistics() -> dict:
    """Model vs reviewer on every case whose current review exists.

    overall: the case's current reading (latest done prediction) vs its current review.
    per_version: for each model version, its latest done prediction on each reviewed case
    (a case re-run with a newer version counts for both versions).
    Two queries whatever the number of cases.
    """
    overall = _empty_stats("current reading")
    rows = cases_for_review().filter(review_verdict__isnull=False, reading_label__isnull=False)
    for reading, verdict in rows.values_list("reading_label", "review_verdict"):
        _count(overall, reading, verdict)

    current_verdict = Subquery(
        Review.objects.filter(case=OuterRef("case"))
        .order_by("-created_at", "-pk")
        .values("verdict")[:1]
    )
    predictions = (
        Prediction.objects.filter(status=Prediction.Status.DONE)
        .annotate(verdict=current_verdict)
        .filter(verdict__isnull=False)
        .order_by("finished_at", "pk")
        .values_list("case_id", "model_version__name", "label", "verdict")
    )
    latest: dict[tuple[int, str], tuple[str, str]] = {}
    for case_id, version, label, verdict in predictions:
        latest[(case_id, version)] = (label, verdict)  # ordered: the last one wins
    per_version: dict[str, dict] = {}
    for (_, version), (label, verdict) in latest.items():
        _count(per_version.setdefault(version, _empty_stats(version)), label, verdict)
    order = {name: i for i, name in enumerate(model_version_names())}
    return {
        "overall": _finish(overall),
        "per_version": [
            _finish(stats)
            for stats in sorted(
                per_version.values(), key=lambda s: order.get(s["model_version"], 0)
            )
        ],
    }


# --------------------------------------------------------------------------------------
# Retraining
# --------------------------------------------------------------------------------------
def reviewed_cases_for_training(since: date | None = None) -> QuerySet[Case]:
    """Cases whose CURRENT review is normal or pneumonia (unusable excluded), optionally
    only those whose current review was made on or after `since`."""
    newest_review = Review.objects.filter(case=OuterRef("pk")).order_by("-created_at", "-pk")
    cases = Case.objects.annotate(
        current_verdict=Subquery(newest_review.values("verdict")[:1]),
        current_review_at=Subquery(newest_review.values("created_at")[:1]),
    ).filter(current_verdict__in=TRAINABLE_VERDICTS)
    if since is not None:
        cases = cases.filter(current_review_at__date__gte=since)
    return cases.order_by("pk")


def active_retraining_job() -> RetrainingJob | None:
    return (
        RetrainingJob.objects.filter(status__in=RetrainingJob.ACTIVE_STATUSES)
        .select_related("requested_by", "base_version")
        .first()
    )


def retraining_jobs() -> QuerySet[RetrainingJob]:
    return RetrainingJob.objects.select_related("requested_by", "base_version", "result")


def retraining_job_status(job: RetrainingJob) -> dict:
    """What the progress page polls."""
    progress = job.progress or {}
    epochs = progress.get("epochs") or job.epochs
    epoch = progress.get("epoch") or 0
    return {
        "job": job.pk,
        "status": job.status,
        "active": job.is_active,
        "phase": progress.get("phase", ""),
        "epoch": epoch,
        "epochs": epochs,
        "percent": round(100 * epoch / epochs) if epochs else 0,
        "logs": progress.get("logs", {}),
        "history": progress.get("history", []),
        "cancel_requested": job.cancel_requested,
        "error": job.error_message,
        "result": job.result.name if job.result_id else None,
        "log_tail": "\n".join(job.log_tail.splitlines()[-20:]),
    }


def model_versions_for_comparison(model_version: ModelVersion) -> ModelVersion | None:
    """The active version to compare `model_version` with (None when it is the active one)."""
    active = ModelVersion.objects.filter(is_active=True).first()
    if active is None or active.pk == model_version.pk:
        return None
    return active


def summary_metrics(model_version: ModelVersion) -> dict:
    """Test-split metrics of a version, wherever they were recorded."""
    if model_version.test_metrics:
        return model_version.test_metrics
    metrics = model_version.metrics or {}
    if isinstance(metrics.get("test"), dict):
        return metrics["test"].get("metrics", metrics["test"])
    if "accuracy" in metrics:
        return metrics
    return {}


COMPARED_METRICS = (
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("precision", "Precision"),
    ("auc", "AUC"),
    ("threshold", "Threshold"),
    ("n", "Test images"),
)
# The validation carve is where a version is chosen; the test split only reports it.
VALIDATION_METRICS = tuple(
    (key, "Validation images" if key == "n" else label) for key, label in COMPARED_METRICS
)
COMPARED_PLOTS = (
    ("test_roc", "ROC, test split"),
    ("test_confusion", "Confusion matrix, test split"),
    ("validation_roc", "ROC, validation"),
    ("training", "Training curves"),
)


def version_comparison(model_version: ModelVersion) -> dict:
    """`model_version` next to the active version: validation and test metrics, confusion
    matrices, plots.

    {"active": ModelVersion | None, "versions": [this, active?],
     "validation_rows", "rows": [{"label", "values": [one per version]}],
     "matrices": [[[tn, fp], [fn, tp]] | None, one per version],
     "plot_rows": [{"label", "cells": [(version, kind | None), one per version]}]}
    """
    active = model_versions_for_comparison(model_version)
    versions = [model_version] + ([active] if active else [])
    metrics = [summary_metrics(version) for version in versions]
    rows = _metric_rows(metrics, COMPARED_METRICS)
    validation_rows = _metric_rows(
        [version.validation_metrics or {} for version in versions], VALIDATION_METRICS
    )
    plot_rows = [
        {
            "label": label,
            "cells": [
                (version, kind if kind in (version.plots or {}) else None) for version in versions
            ],
        }
        for kind, label in COMPARED_PLOTS
        if any(kind in (version.plots or {}) for version in versions)
    ]
    return {
        "active": active,
        "versions": versions,
        "validation_rows": validation_rows,
        "rows": rows,
        "matrices": [(m.get("confusion_matrix") or {}).get("values") for m in metrics],
        "plot_rows": plot_rows,
    }


def _metric_rows(metrics: list[dict], compared: tuple[tuple[str, str], ...]) -> list[dict]:
    return [
        {"label": label, "values": [_format_metric(key, m.get(key)) for m in metrics]}
        for key, label in compared
        if any(m.get(key) is not None for m in metrics)
    ]


def _format_metric(key: str, value) -> str:
    if value is None:
        return "—"
    if key == "n":
        return str(value)
    if key in ("auc", "threshold"):
        return f"{value:.4f}"
    return f"{value * 100:.1f}%"
