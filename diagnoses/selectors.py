"""Queries of the diagnoses app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.db.models import Exists, OuterRef, QuerySet, Subquery

from diagnoses.models import Case, Prediction, Review


@dataclass(frozen=True)
class CaseFilters:
    reading: str = ""  # "pneumonia" | "normal"
    status: str = ""  # a Prediction.Status value, of the latest prediction
    created_from: date | None = None
    created_to: date | None = None  # inclusive
    reviewed: bool | None = None
    reference: str = ""  # prefix, case-insensitive


def cases_with_summary() -> QuerySet[Case]:
    """Cases annotated with their current reading, latest status and current review.

    One query whatever the number of rows (correlated subqueries, no N+1):
    - reading_label / reading_probability / reading_model: the latest DONE prediction
    - latest_status: the status of the most recent prediction of any status
    - review_verdict: the verdict of the newest review (None when not reviewed)
    """
    latest_done = Prediction.objects.filter(
        case=OuterRef("pk"), status=Prediction.Status.DONE
    ).order_by("-finished_at", "-pk")
    latest_any = Prediction.objects.filter(case=OuterRef("pk")).order_by("-queued_at", "-pk")
    newest_review = Review.objects.filter(case=OuterRef("pk")).order_by("-created_at", "-pk")
    return Case.objects.annotate(
        reading_label=Subquery(latest_done.values("label")[:1]),
        reading_probability=Subquery(latest_done.values("probability")[:1]),
        reading_model=Subquery(latest_done.values("model_version__name")[:1]),
        latest_status=Subquery(latest_any.values("status")[:1]),
        review_verdict=Subquery(newest_review.values("verdict")[:1]),
    ).order_by("-created_at", "-pk")


def case_history(filters: CaseFilters | None = None) -> QuerySet[Case]:
    """Every case, newest first, with its summary (see cases_with_summary), filtered."""
    filters = filters or CaseFilters()
    cases = cases_with_summary()
    if filters.reference:
        cases = cases.filter(reference__istartswith=filters.reference.strip())
    if filters.created_from:
        cases = cases.filter(created_at__date__gte=filters.created_from)
    if filters.created_to:
        cases = cases.filter(created_at__date__lte=filters.created_to)
    if filters.reading:
        cases = cases.filter(reading_label=filters.reading)
    if filters.status:
        cases = cases.filter(latest_status=filters.status)
    if filters.reviewed is not None:
        reviewed = Exists(Review.objects.filter(case=OuterRef("pk")))
        cases = cases.filter(reviewed if filters.reviewed else ~reviewed)
    return cases


def case_detail(case_id: int) -> Case:
    return cases_with_summary().select_related("uploaded_by").get(pk=case_id)


def case_predictions(case: Case) -> QuerySet[Prediction]:
    return case.predictions.select_related("model_version").order_by("-queued_at", "-pk")


def current_prediction(case: Case) -> Prediction | None:
    """The case's reading: its latest DONE prediction."""
    return (
        case.predictions.filter(status=Prediction.Status.DONE)
        .select_related("model_version")
        .order_by("-finished_at", "-pk")
        .first()
    )


def latest_prediction(case: Case) -> Prediction | None:
    return case.predictions.select_related("model_version").order_by("-queued_at", "-pk").first()


def current_review(case: Case) -> Review | None:
    return case.reviews.select_related("reviewer").order_by("-created_at", "-pk").first()


def prediction_status(case: Case) -> dict:
    """What the case page polls: the latest prediction's status and the current reading."""
    latest = latest_prediction(case)
    current = current_prediction(case)
    return {
        "case": case.pk,
        "status": latest.status if latest else None,
        "pending": bool(latest and latest.is_pending),
        "prediction": latest.pk if latest else None,
        "error": latest.error_message if latest else "",
        "reading": (
            {
                "label": current.label,
                "probability": current.probability,
                "threshold": current.threshold,
                "model_version": current.model_version.name,
            }
            if current
            else None
        ),
    }
