"""Review services and the review/agreement selectors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone
from fixtures.staffdata import (
    PNEUMONIA_SAMPLES,
    finish_prediction,
    make_case,
    make_user,
    make_version,
)

from diagnoses import reviews, selectors_staff
from diagnoses.models import Prediction, RetrainingJob, Review

pytest_plugins = ["fixtures.staffkit"]
pytestmark = pytest.mark.django_db


def test_record_review_is_attributed_and_a_second_review_adds_a_row(
    fake_version,
    reviewer,
    superuser,
):
    case = make_case(reviewer)
    first = reviews.record_review(case=case, reviewer=reviewer, verdict="normal", comment=" ok ")
    second = reviews.record_review(case=case, reviewer=superuser, verdict="pneumonia")

    assert first.reviewer == reviewer and first.comment == "ok"
    rows = list(case.reviews.order_by("pk").values_list("reviewer_id", "verdict", "comment"))
    assert rows == [(reviewer.pk, "normal", "ok"), (superuser.pk, "pneumonia", "")]
    assert selectors_staff.case_reviews(case).first() == second  # newest is current
    assert selectors_staff.cases_for_review().get(pk=case.pk).review_verdict == "pneumonia"


def test_non_staff_cannot_review_and_bad_verdicts_are_refused(
    fake_version,
    reviewer,
    clinician,
):
    case = make_case(reviewer)
    with pytest.raises(PermissionDenied):
        reviews.record_review(case=case, reviewer=clinician, verdict="normal")
    with pytest.raises(ValidationError):
        reviews.record_review(case=case, reviewer=reviewer, verdict="maybe")
    assert not Review.objects.exists()


def test_staff_without_the_permission_are_refused_by_the_services_too(
    fake_version, reviewer, django_user_model
):
    """The admin and staff pages check permissions; so do the services behind them."""
    from diagnoses import retraining

    bare_staff = make_user(django_user_model, staff=True)
    case = make_case(reviewer)
    calls = {
        "add_review": lambda: reviews.record_review(
            case=case, reviewer=bare_staff, verdict="normal"
        ),
        "add_prediction or": lambda: reviews.rerun_cases(cases=[case], user=bare_staff),
        "add_retrainingjob": lambda: retraining.request_retraining(user=bare_staff),
        "change_modelversion": lambda: retraining.activate_version(
            model_version=fake_version, user=bare_staff
        ),
    }
    for perm, call in calls.items():
        with pytest.raises(PermissionDenied, match=perm):
            call()
    assert not Review.objects.exists() and not RetrainingJob.objects.exists()


def test_confirm_readings_uses_the_reading_and_skips_cases_without_one(
    fake_version,
    reviewer,
):
    read = make_case(reviewer)
    finish_prediction(read, probability=0.9)
    unread = make_case(reviewer)

    outcome = reviews.confirm_readings(cases=[read, unread], reviewer=reviewer)

    assert [r.case for r in outcome.reviewed] == [read] and outcome.skipped == [unread]
    assert read.reviews.get().verdict == "pneumonia"
    assert not unread.reviews.exists()


def test_rerun_cases_queues_one_prediction_with_the_active_version(
    fake_version,
    reviewer,
):
    case = make_case(reviewer)
    finish_prediction(case, probability=0.2)
    newer = make_version("fake-v2")
    from diagnoses import services

    services.activate_model_version(newer)
    outcome = reviews.rerun_cases(cases=[case], user=reviewer)
    again = reviews.rerun_cases(cases=[case], user=reviewer)

    assert [p.model_version for p in outcome.queued] == [newer]
    assert again.queued == [] and again.already_pending == outcome.queued


def test_review_queue_puts_unreviewed_cases_closest_to_threshold_first(
    fake_version,
    reviewer,
):
    far = make_case(reviewer, reference="far")
    finish_prediction(far, probability=0.99)
    near = make_case(reviewer, reference="near")
    finish_prediction(near, probability=0.45)
    middle = make_case(reviewer, reference="middle")
    finish_prediction(middle, probability=0.2)
    reviewed = make_case(reviewer, reference="reviewed")
    finish_prediction(reviewed, probability=0.5)
    reviews.record_review(case=reviewed, reviewer=reviewer, verdict="normal")
    make_case(reviewer, reference="no reading")

    queue = list(selectors_staff.review_queue().values_list("reference", flat=True))
    assert queue == ["near", "middle", "far"]


def test_agreement_annotation(fake_version, reviewer):
    cases = {}
    for name, probability, verdict in [
        ("agree", 0.9, "pneumonia"),
        ("disagree", 0.1, "pneumonia"),
        ("unusable", 0.9, "unusable"),
        ("unreviewed", 0.9, None),
    ]:
        cases[name] = make_case(reviewer, reference=name)
        finish_prediction(cases[name], probability=probability)
        if verdict:
            reviews.record_review(case=cases[name], reviewer=reviewer, verdict=verdict)
    no_reading = make_case(reviewer, reference="no_reading")
    reviews.record_review(case=no_reading, reviewer=reviewer, verdict="normal")

    agreement = dict(selectors_staff.cases_for_review().values_list("reference", "agreement"))
    assert agreement == {
        "agree": "agree",
        "disagree": "disagree",
        "unusable": "unusable",
        "unreviewed": None,
        "no_reading": "no_reading",
    }


def test_agreement_statistics_overall_and_per_version(fake_version, reviewer):
    v2 = make_version("fake-v2")
    # (v1 probability, v2 probability or None, verdict); threshold 0.5
    table = [
        (0.9, 0.8, "pneumonia"),  # v1 agree, v2 agree
        (0.2, 0.7, "pneumonia"),  # v1 disagree, v2 agree
        (0.3, None, "normal"),  # v1 agree
        (0.6, 0.4, "normal"),  # v1 disagree, v2 agree
        (0.7, None, "unusable"),
        (0.9, None, None),  # unreviewed: not counted
    ]
    for v1_probability, v2_probability, verdict in table:
        case = make_case(reviewer)
        finish_prediction(case, probability=v1_probability)
        if v2_probability is not None:
            finish_prediction(case, probability=v2_probability, version=v2)
        if verdict:
            # an older, superseded review must not count
            reviews.record_review(case=case, reviewer=reviewer, verdict="unusable")
            reviews.record_review(case=case, reviewer=reviewer, verdict=verdict)

    stats = selectors_staff.agreement_statistics()
    overall = stats["overall"]  # current reading = v2 where it exists
    assert overall["reviewed"] == 4 and overall["unusable"] == 1
    assert overall["matrix"] == [[2, 0], [0, 2]] and overall["agreement_rate"] == 1.0
    per_version = {s["model_version"]: s for s in stats["per_version"]}
    assert per_version["fake-v1"]["matrix"] == [[1, 1], [1, 1]]
    assert per_version["fake-v1"]["agreement_rate"] == 0.5
    assert per_version["fake-v1"]["unusable"] == 1
    assert per_version["fake-v2"]["matrix"] == [[1, 0], [0, 2]]
    assert per_version["fake-v2"]["agreement_rate"] == 1.0


def test_reviewed_cases_for_training_use_the_current_review_only(
    fake_version,
    reviewer,
):
    normal = make_case(reviewer)
    reviews.record_review(case=normal, reviewer=reviewer, verdict="normal")
    pneumonia = make_case(reviewer, PNEUMONIA_SAMPLES[0])
    reviews.record_review(case=pneumonia, reviewer=reviewer, verdict="unusable")
    reviews.record_review(case=pneumonia, reviewer=reviewer, verdict="pneumonia")
    now_unusable = make_case(reviewer)
    reviews.record_review(case=now_unusable, reviewer=reviewer, verdict="normal")
    reviews.record_review(case=now_unusable, reviewer=reviewer, verdict="unusable")
    make_case(reviewer)  # never reviewed
    old = make_case(reviewer)
    old_review = reviews.record_review(case=old, reviewer=reviewer, verdict="normal")
    Review.objects.filter(pk=old_review.pk).update(created_at=timezone.now() - timedelta(days=30))

    selected = selectors_staff.reviewed_cases_for_training()
    assert {(c.pk, c.current_verdict) for c in selected} == {
        (normal.pk, "normal"),
        (pneumonia.pk, "pneumonia"),
        (old.pk, "normal"),
    }
    since = (timezone.now() - timedelta(days=1)).date()
    assert set(selectors_staff.reviewed_cases_for_training(since).values_list("pk", flat=True)) == {
        normal.pk,
        pneumonia.pk,
    }
    assert Prediction.objects.count() == 5  # the helpers queued one prediction per case
