"""Admin: case review (list, detail, inline review, actions), review queue, model versions,
staff pages and their permissions."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from fixtures.staffdata import (
    PNEUMONIA_SAMPLES,
    finish_prediction,
    make_case,
    make_user,
    make_version,
)

from diagnoses import reviews
from diagnoses.models import ModelVersion, Prediction, RetrainingJob, Review

pytest_plugins = ["fixtures.staffkit"]
pytestmark = pytest.mark.django_db

CASES_URL = "/admin/diagnoses/case/"
QUEUE_URL = "/admin/diagnoses/reviewqueuecase/"


@pytest.fixture
def reviewer_client(client, reviewer):
    client.force_login(reviewer)
    return client


def change_url(case):
    return f"{CASES_URL}{case.pk}/change/"


def run_action(client, action, cases, url=CASES_URL):
    return client.post(
        url,
        {"action": action, "_selected_action": [c.pk for c in cases], "index": 0},
        follow=True,
    )


# --------------------------------------------------------------------------------------
# Case list
# --------------------------------------------------------------------------------------
def test_case_list_shows_reading_review_and_agreement_without_n_plus_one(
    reviewer_client,
    reviewer,
    fake_version,
):
    def list_queries():
        with CaptureQueriesContext(connection) as ctx:
            response = reviewer_client.get(CASES_URL)
        assert response.status_code == 200
        return len(ctx.captured_queries), response.content.decode()

    case = make_case(reviewer, reference="REF-1")
    finish_prediction(case, probability=0.2)
    reviews.record_review(case=case, reviewer=reviewer, verdict="pneumonia")
    few, body = list_queries()
    assert reverse("diagnoses:case_image", args=[case.pk, "thumbnail"]) in body
    assert "REF-1" in body and "20.0%" in body and "Disagree" in body and "fake-v1" in body
    assert "/media/" not in body  # images only through the auth-checked views

    for i in range(8):
        other = make_case(reviewer, reference=f"REF-x{i}")
        finish_prediction(other, probability=0.9)
        reviews.record_review(case=other, reviewer=reviewer, verdict="pneumonia")
    many, _ = list_queries()
    assert many == few


def test_case_list_filters_and_search(reviewer_client, reviewer, fake_version):
    agree = make_case(reviewer, reference="AGREE-1")
    finish_prediction(agree, probability=0.9)
    reviews.record_review(case=agree, reviewer=reviewer, verdict="pneumonia")
    disagree = make_case(reviewer, reference="DIS-1")
    finish_prediction(disagree, probability=0.1)
    reviews.record_review(case=disagree, reviewer=reviewer, verdict="pneumonia")
    unreviewed = make_case(reviewer, reference="OPEN-1")
    finish_prediction(unreviewed, probability=0.3)
    other_version = make_version("fake-v2")
    finish_prediction(unreviewed, probability=0.6, version=other_version)

    def refs(query):
        response = reviewer_client.get(CASES_URL + query)
        assert response.status_code == 200
        return {c.reference for c in response.context["cl"].result_list}

    assert refs("?agreement=disagree") == {"DIS-1"}
    assert refs("?agreement=agree") == {"AGREE-1"}
    assert refs("?reviewed=no") == {"OPEN-1"}
    assert refs("?reviewed=yes") == {"AGREE-1", "DIS-1"}
    assert refs("?reading=normal") == {"DIS-1"}
    assert refs("?model=fake-v2") == {"OPEN-1"}
    assert refs("?q=DIS") == {"DIS-1"}
    assert refs("?o=4") == {"AGREE-1", "DIS-1", "OPEN-1"}  # sort by probability works


def test_review_queue_orders_by_distance_to_threshold(
    reviewer_client,
    reviewer,
    fake_version,
):
    for reference, probability in [("sure", 0.99), ("unsure", 0.52), ("fairly", 0.2)]:
        finish_prediction(make_case(reviewer, reference=reference), probability=probability)
    done = make_case(reviewer, reference="done")
    finish_prediction(done, probability=0.5)
    reviews.record_review(case=done, reviewer=reviewer, verdict="normal")

    response = reviewer_client.get(QUEUE_URL)
    assert response.status_code == 200
    assert [c.reference for c in response.context["cl"].result_list] == [
        "unsure",
        "fairly",
        "sure",
    ]


# --------------------------------------------------------------------------------------
# Case detail: image, inlines, adding a review
# --------------------------------------------------------------------------------------
def test_case_page_shows_image_heatmap_predictions_and_reviews(
    reviewer_client,
    reviewer,
    superuser,
    fake_version,
):
    case = make_case(reviewer, reference="DETAIL-1")
    finish_prediction(case, probability=0.83)
    reviews.record_review(case=case, reviewer=superuser, verdict="normal", comment="old look")

    body = reviewer_client.get(change_url(case)).content.decode()
    assert reverse("diagnoses:case_image", args=[case.pk, "display"]) in body
    assert reverse("diagnoses:case_image", args=[case.pk, "heatmap"]) in body
    assert "0.83" in body  # prediction inline (read-only)
    assert "old look" in body and superuser.username in body
    assert 'name="reviews-0-verdict"' not in body  # the existing review is not editable
    assert 'name="reviews-1-verdict"' in body  # one empty row for a new review


def _inline_post_data(case, verdict, comment, existing):
    data = {
        "reviews-TOTAL_FORMS": str(existing + 1),
        "reviews-INITIAL_FORMS": str(existing),
        "reviews-MIN_NUM_FORMS": "0",
        "reviews-MAX_NUM_FORMS": "1000",
        "predictions-TOTAL_FORMS": str(case.predictions.count()),
        "predictions-INITIAL_FORMS": str(case.predictions.count()),
        "predictions-MIN_NUM_FORMS": "0",
        "predictions-MAX_NUM_FORMS": "1000",
        f"reviews-{existing}-verdict": verdict,
        f"reviews-{existing}-comment": comment,
        f"reviews-{existing}-case": str(case.pk),
        "_save": "Save",
    }
    for i, review in enumerate(case.reviews.order_by("-created_at", "-pk")):
        data[f"reviews-{i}-id"] = str(review.pk)
        data[f"reviews-{i}-case"] = str(case.pk)
        # a tampered POST trying to change an earlier review must have no effect
        data[f"reviews-{i}-verdict"] = "unusable"
    for i, prediction in enumerate(case.predictions.order_by("-queued_at", "-pk")):
        data[f"predictions-{i}-id"] = str(prediction.pk)
        data[f"predictions-{i}-case"] = str(case.pk)
    return data


def test_adding_a_review_on_the_case_page_records_the_user_and_keeps_earlier_ones(
    reviewer_client,
    reviewer,
    superuser,
    fake_version,
):
    case = make_case(reviewer)
    finish_prediction(case, probability=0.7)
    earlier = reviews.record_review(case=case, reviewer=superuser, verdict="normal")

    response = reviewer_client.post(
        change_url(case), _inline_post_data(case, "pneumonia", "consolidation RLL", existing=1)
    )
    assert response.status_code == 302, response.content.decode()[:3000]

    rows = list(case.reviews.order_by("pk").values_list("pk", "reviewer_id", "verdict", "comment"))
    assert rows == [
        (earlier.pk, superuser.pk, "normal", ""),
        (rows[1][0], reviewer.pk, "pneumonia", "consolidation RLL"),
    ]


def test_review_actions_record_the_user(reviewer_client, reviewer, fake_version):
    a, b = make_case(reviewer), make_case(reviewer, PNEUMONIA_SAMPLES[0])
    finish_prediction(a, probability=0.1)
    finish_prediction(b, probability=0.95)
    no_reading = make_case(reviewer)

    run_action(reviewer_client, "mark_pneumonia", [a])
    run_action(reviewer_client, "mark_unusable", [a])
    response = run_action(reviewer_client, "confirm_reading", [b, no_reading])
    assert "1 case(s) skipped" in response.content.decode()
    run_action(reviewer_client, "mark_normal", [b])

    assert list(a.reviews.order_by("pk").values_list("verdict", flat=True)) == [
        "pneumonia",
        "unusable",
    ]
    assert list(b.reviews.order_by("pk").values_list("verdict", flat=True)) == [
        "pneumonia",
        "normal",
    ]
    assert set(Review.objects.values_list("reviewer_id", flat=True)) == {reviewer.pk}
    assert not no_reading.reviews.exists()


def test_rerun_action_queues_with_the_active_version(
    reviewer_client,
    reviewer,
    fake_version,
):
    case = make_case(reviewer)
    finish_prediction(case, probability=0.4)
    newer = make_version("fake-v2")
    ModelVersion.objects.update(is_active=False)
    ModelVersion.objects.filter(pk=newer.pk).update(is_active=True)

    response = run_action(reviewer_client, "rerun_with_active_model", [case])
    assert "1 prediction(s) queued" in response.content.decode()
    latest = case.predictions.order_by("-pk").first()
    assert latest.model_version == newer and latest.status == Prediction.Status.QUEUED


def test_staff_without_review_permission_cannot_review(client, django_user_model, fake_version):
    viewer = make_user(django_user_model, staff=True, perms=("view_case",))
    case = make_case(viewer)
    finish_prediction(case, probability=0.9)
    client.force_login(viewer)

    body = client.get(CASES_URL).content.decode()
    assert "mark_pneumonia" not in body
    run_action(client, "mark_pneumonia", [case])
    assert client.get(change_url(case)).status_code == 200
    response = client.post(change_url(case), _inline_post_data(case, "normal", "", existing=0))
    assert response.status_code == 403
    assert not Review.objects.exists()


def test_non_staff_cannot_use_the_admin_or_staff_pages(
    client,
    clinician,
    reviewer,
    fake_version,
):
    case = make_case(reviewer)
    version = make_version("fake-v2")
    job = RetrainingJob.objects.create(requested_by=reviewer, epochs=1, status="running")
    client.force_login(clinician)

    for url in (CASES_URL, QUEUE_URL, change_url(case), "/admin/diagnoses/modelversion/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    response = client.post(f"/admin/diagnoses/modelversion/{version.pk}/activate/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    run_action(client, "mark_normal", [case])
    for url in ("/staff/retraining/", f"/staff/retraining/{job.pk}/", "/staff/agreement/"):
        assert client.get(url).status_code == 403
    assert client.get(f"/staff/retraining/{job.pk}/status.json").status_code == 403
    assert client.post("/staff/retraining/", {"mode": "fine_tune"}).status_code == 403
    assert client.post(f"/staff/retraining/{job.pk}/cancel/").status_code == 403

    job.refresh_from_db()
    assert not job.cancel_requested
    assert RetrainingJob.objects.count() == 1
    assert not Review.objects.exists()
    assert ModelVersion.objects.get(is_active=True).name == "fake-v1"


# --------------------------------------------------------------------------------------
# Model versions
# --------------------------------------------------------------------------------------
TEST_METRICS = {
    "accuracy": 0.91,
    "sensitivity": 0.99,
    "specificity": 0.8,
    "auc": 0.97,
    "threshold": 0.3,
    "n": 624,
    "confusion_matrix": {"values": [[187, 47], [4, 386]]},
}


def test_model_version_page_compares_with_the_active_one_and_activates(
    reviewer_client,
    staff_var,
    fake_version,
):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    plot = default_storage.save("models/new/test_roc.png", ContentFile(b"\x89PNG fake"))
    new = make_version(
        "ft-job1",
        test_metrics=TEST_METRICS,
        validation_metrics={"accuracy": 0.9634, "auc": 0.99581, "n": 246},
        plots={"test_roc": plot},
    )
    ModelVersion.objects.filter(pk=fake_version.pk).update(
        test_metrics={
            **TEST_METRICS,
            "accuracy": 0.88,
            "confusion_matrix": {"values": [[1, 2], [3, 4]]},
        }
    )
    url = f"/admin/diagnoses/modelversion/{new.pk}/change/"

    body = reviewer_client.get(url).content.decode()
    assert "Side by side with the active version" in body
    validation, test = body.split('<th scope="col">Test split</th>')
    assert "<th>Validation carve</th>" in validation
    assert "96.3%" in validation and "0.9958" in validation and "<td>246</td>" in validation
    assert "96.3%" not in test
    assert "91.0%" in body and "88.0%" in body and "0.9700" in body
    assert "<td>187</td>" in body and "<td>386</td>" in body and "<td>4</td>" in body
    plot_url = f"/admin/diagnoses/modelversion/{new.pk}/plot/test_roc/"
    assert plot_url in body
    assert b"".join(reviewer_client.get(plot_url).streaming_content) == b"\x89PNG fake"
    assert 'id="activate-form"' in body

    assert (
        reviewer_client.get(f"/admin/diagnoses/modelversion/{new.pk}/activate/").status_code == 405
    )
    response = reviewer_client.post(f"/admin/diagnoses/modelversion/{new.pk}/activate/")
    assert response.status_code == 302
    assert list(ModelVersion.objects.filter(is_active=True)) == [new]

    # rolling back = activating the earlier one (admin action)
    run_action(
        reviewer_client, "activate_selected", [fake_version], url="/admin/diagnoses/modelversion/"
    )
    assert list(ModelVersion.objects.filter(is_active=True)) == [fake_version]
    body = reviewer_client.get("/admin/diagnoses/modelversion/").content.decode()
    assert "91.0%" in body


def test_staff_without_change_permission_cannot_activate(
    client,
    django_user_model,
    fake_version,
):
    viewer = make_user(django_user_model, staff=True, perms=("view_modelversion",))
    new = make_version("fake-v2")
    client.force_login(viewer)

    body = client.get(f"/admin/diagnoses/modelversion/{new.pk}/change/").content.decode()
    assert 'id="activate-form"' not in body
    assert client.post(f"/admin/diagnoses/modelversion/{new.pk}/activate/").status_code == 403
    run_action(client, "activate_selected", [new], url="/admin/diagnoses/modelversion/")
    assert list(ModelVersion.objects.filter(is_active=True)) == [fake_version]


def test_activation_switches_the_version_new_predictions_use(
    reviewer,
    fake_version,
):
    from diagnoses import retraining

    new = make_version("fake-v2")
    before = make_case(reviewer).predictions.get()
    retraining.activate_version(model_version=new, user=reviewer)
    after = make_case(reviewer).predictions.get()

    assert before.model_version == fake_version and after.model_version == new
    assert list(ModelVersion.objects.filter(is_active=True)) == [new]


# --------------------------------------------------------------------------------------
# Staff pages
# --------------------------------------------------------------------------------------
def test_agreement_page(reviewer_client, reviewer, fake_version):
    for probability, verdict in [(0.9, "pneumonia"), (0.9, "normal"), (0.1, "normal")]:
        case = make_case(reviewer)
        finish_prediction(case, probability=probability)
        reviews.record_review(case=case, reviewer=reviewer, verdict=verdict)

    response = reviewer_client.get("/staff/agreement/")
    assert response.status_code == 200
    stats = response.context["stats"]["overall"]
    assert (stats["reviewed"], stats["agree"], stats["matrix"]) == (3, 2, [[1, 1], [0, 1]])
    body = response.content.decode()
    assert "66.7%" in body and 'data-version="fake-v1"' in body


def test_admin_index_links_to_staff_tools(reviewer_client):
    body = reviewer_client.get("/admin/").content.decode()
    assert "/staff/retraining/" in body and "/staff/agreement/" in body and QUEUE_URL in body
