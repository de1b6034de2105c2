"""History page: newest first, filters, search, pagination, constant query count."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from diagnoses.models import Case, ModelVersion, Prediction, Review

pytest_plugins = ["fixtures.casekit"]
pytestmark = pytest.mark.django_db

DONE, QUEUED, FAILED = Prediction.Status.DONE, Prediction.Status.QUEUED, Prediction.Status.FAILED


@pytest.fixture
def model_version():
    return ModelVersion.objects.create(
        name="hist-model", model_file="models/x.keras", threshold=0.5, image_size=224
    )


def make_case(user, model_version, reference="", *, predictions=(), review=None, days_ago=0):
    """A case row (no stored files needed here) with predictions given as (status, prob)."""
    case = Case.objects.create(
        uploaded_by=user,
        reference=reference,
        original="cases/original/x",
        display_image="cases/display/x.png",
        thumbnail="cases/thumbnail/x.jpg",
        sha256="0" * 64,
        image_format="JPEG",
        width=100,
        height=100,
    )
    if days_ago:
        Case.objects.filter(pk=case.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    now = timezone.now()
    for offset, (status, probability) in enumerate(predictions):
        Prediction.objects.create(
            case=case,
            model_version=model_version,
            status=status,
            probability=probability,
            label=("" if probability is None else "pneumonia" if probability >= 0.5 else "normal"),
            finished_at=now + timedelta(seconds=offset) if status == DONE else None,
        )
    if review:
        Review.objects.create(case=case, reviewer=user, verdict=review)
    return case


def rows(response) -> list[int]:
    return [case.pk for case in response.context["page"].object_list]


def test_history_is_the_home_page_newest_first_with_summaries(
    staff_client, staff_user, model_version
):
    older = make_case(staff_user, model_version, "OLD-1", predictions=[(DONE, 0.9)], days_ago=2)
    # Re-run: the newest DONE prediction is the reading, the newest of any status the status.
    newer = make_case(
        staff_user,
        model_version,
        "NEW-1",
        predictions=[(DONE, 0.2), (DONE, 0.7), (QUEUED, None)],
        review="unusable",
    )
    response = staff_client.get("/")
    assert rows(response) == [newer.pk, older.pk]
    first = response.context["page"].object_list[0]
    assert (first.reading_label, first.reading_probability) == ("pneumonia", 0.7)
    assert first.latest_status == "queued" and first.review_verdict == "unusable"
    body = response.content.decode()
    assert f'src="/cases/{newer.pk}/image/thumbnail/"' in body
    assert "70.0%" in body and "unusable" in body and "not reviewed" in body


def test_newest_review_is_the_current_one(staff_client, staff_user, model_version):
    case = make_case(staff_user, model_version, predictions=[(DONE, 0.9)], review="normal")
    Review.objects.create(case=case, reviewer=staff_user, verdict="pneumonia")
    assert staff_client.get("/").context["page"].object_list[0].review_verdict == "pneumonia"


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"reading": "pneumonia"}, ["pneu-reviewed", "pneu"]),
        ({"reading": "normal"}, ["normal"]),
        ({"status": "queued"}, ["queued"]),
        ({"status": "failed"}, ["failed"]),
        ({"reviewed": "yes"}, ["pneu-reviewed"]),
        ({"reviewed": "no"}, ["failed", "queued", "normal", "pneu"]),
        ({"q": "PNEU"}, ["pneu-reviewed", "pneu"]),
        ({"q": "eu"}, []),  # prefix search
        ({"created_from": "2000-01-01", "created_to": "2000-01-01"}, []),
        ({"reading": "pneumonia", "reviewed": "no"}, ["pneu"]),
        ({"reading": "bogus"}, ["pneu-reviewed", "failed", "queued", "normal", "pneu"]),
    ],
)
def test_filters_and_search(staff_client, staff_user, model_version, query, expected):
    make_case(staff_user, model_version, "pneu", predictions=[(DONE, 0.9)])
    make_case(staff_user, model_version, "normal", predictions=[(DONE, 0.1)])
    make_case(staff_user, model_version, "queued", predictions=[(QUEUED, None)])
    make_case(staff_user, model_version, "failed", predictions=[(FAILED, None)])
    make_case(
        staff_user, model_version, "pneu-reviewed", predictions=[(DONE, 0.8)], review="pneumonia"
    )
    response = staff_client.get("/", query)
    assert response.status_code == 200
    assert [case.reference for case in response.context["page"].object_list] == expected


def test_date_range(staff_client, staff_user, model_version):
    make_case(staff_user, model_version, "ten-days", days_ago=10)
    make_case(staff_user, model_version, "three-days", days_ago=3)
    make_case(staff_user, model_version, "today")
    today = timezone.now().date()
    query = {
        "created_from": (today - timedelta(days=5)).isoformat(),
        "created_to": (today - timedelta(days=1)).isoformat(),
    }
    response = staff_client.get("/", query)
    assert [case.reference for case in response.context["page"].object_list] == ["three-days"]
    response = staff_client.get("/", {"created_from": today.isoformat()})
    assert [case.reference for case in response.context["page"].object_list] == ["today"]


def test_pagination_keeps_the_filters(staff_client, staff_user, model_version):
    for i in range(30):
        make_case(staff_user, model_version, f"P-{i:02d}", predictions=[(DONE, 0.9)])
    make_case(staff_user, model_version, "other", predictions=[(DONE, 0.1)])

    first = staff_client.get("/", {"reading": "pneumonia"})
    assert len(rows(first)) == 25
    assert first.context["page"].paginator.count == 30
    assert "reading=pneumonia&amp;page=2" in first.content.decode()

    second = staff_client.get("/", {"reading": "pneumonia", "page": 2})
    references = [case.reference for case in second.context["page"].object_list]
    assert references == [f"P-{i:02d}" for i in range(4, -1, -1)]
    assert staff_client.get("/", {"page": "999"}).context["page"].number == 2


def test_query_count_does_not_grow_with_the_page_size(staff_client, staff_user, model_version):
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get("/").status_code == 200
        return len(queries)

    def add_cases(n):
        for _ in range(n):
            make_case(
                staff_user,
                model_version,
                predictions=[(DONE, 0.3), (QUEUED, None)],
                review="normal",
            )

    add_cases(5)
    with_5 = count_queries()
    add_cases(20)
    with_25 = count_queries()
    assert len(rows(staff_client.get("/"))) == 25
    assert with_25 == with_5
