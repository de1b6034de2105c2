"""Clinician reviews of cases. A review is never changed or deleted: a new one is a new row,
and the newest review of a case is its current one."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from diagnoses import services
from diagnoses.models import Case, Prediction, Review

logger = logging.getLogger(__name__)
REVIEW_PERMISSION = "diagnoses.add_review"


def is_staff_with(user, perm: str | None = None) -> bool:
    """An active staff member, holding `perm` when one is named."""
    return bool(
        user
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and (perm is None or user.has_perm(perm))
    )


def require_staff(user, *any_of: str) -> None:
    """Reviews, retraining and model activation are for staff only, holding one of the
    permissions named (those the admin and the staff pages check for the same action)."""
    if not is_staff_with(user):
        raise PermissionDenied("Only staff members may do this.")
    if any_of and not any(user.has_perm(perm) for perm in any_of):
        raise PermissionDenied(
            f"Your account lacks the permission this needs ({' or '.join(any_of)})."
        )


def record_review(*, case: Case, reviewer, verdict: str, comment: str = "") -> Review:
    """Add a review of `case` by `reviewer`; earlier reviews stay as they are."""
    require_staff(reviewer, REVIEW_PERMISSION)
    if verdict not in Review.Verdict.values:
        raise ValidationError(f"Unknown verdict {verdict!r}.")
    review = Review.objects.create(
        case=case, reviewer=reviewer, verdict=verdict, comment=(comment or "").strip()
    )
    logger.info("case %s reviewed by %s: %s", case.pk, reviewer.pk, verdict)
    return review


@dataclass
class BulkReviewOutcome:
    reviewed: list[Review] = field(default_factory=list)
    skipped: list[Case] = field(default_factory=list)  # no reading to confirm


@transaction.atomic
def review_cases(
    *, cases: Iterable[Case], reviewer, verdict: str, comment: str = ""
) -> BulkReviewOutcome:
    """The same verdict for several cases (admin actions "mark normal" etc.)."""
    outcome = BulkReviewOutcome()
    for case in cases:
        outcome.reviewed.append(
            record_review(case=case, reviewer=reviewer, verdict=verdict, comment=comment)
        )
    return outcome


@transaction.atomic
def confirm_readings(*, cases: Iterable[Case], reviewer) -> BulkReviewOutcome:
    """Review each case with its current reading as the verdict; cases without a reading
    are skipped."""
    require_staff(reviewer, REVIEW_PERMISSION)
    outcome = BulkReviewOutcome()
    for case in cases:
        reading = (
            case.predictions.filter(status=Prediction.Status.DONE)
            .order_by("-finished_at", "-pk")
            .values_list("label", flat=True)
            .first()
        )
        if not reading:
            outcome.skipped.append(case)
            continue
        outcome.reviewed.append(
            record_review(
                case=case, reviewer=reviewer, verdict=reading, comment="Confirmed the reading."
            )
        )
    return outcome


@dataclass
class RerunOutcome:
    queued: list[Prediction] = field(default_factory=list)
    already_pending: list[Prediction] = field(default_factory=list)


def rerun_cases(*, cases: Iterable[Case], user) -> RerunOutcome:
    """Queue a prediction with the active model for each case (services.rerun_prediction).

    Raises services.NoActiveModel when no version is active.
    """
    require_staff(user, "diagnoses.add_prediction", "diagnoses.change_case")
    outcome = RerunOutcome()
    for case in cases:
        prediction, created = services.rerun_prediction(case=case)
        (outcome.queued if created else outcome.already_pending).append(prediction)
    return outcome
