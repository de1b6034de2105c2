"""Access control: every page and every image needs a login; forms carry CSRF tokens."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.test import Client

from diagnoses.models import Case, ModelVersion, Prediction

pytest_plugins = ["fixtures.casekit"]
pytestmark = pytest.mark.django_db


@pytest.fixture
def case(staff_user, var_dir):
    """A case whose files (including a heatmap) exist in storage."""
    model_version = ModelVersion.objects.create(
        name="access-model", model_file="models/x.keras", threshold=0.5, image_size=224
    )
    case = Case(
        uploaded_by=staff_user,
        sha256="0" * 64,
        image_format="PNG",
        width=64,
        height=64,
    )
    for field in ("original", "display_image", "thumbnail"):
        getattr(case, field).save("x.png", ContentFile(b"secret image bytes"), save=False)
    case.save()
    prediction = Prediction(
        case=case, model_version=model_version, status="done", probability=0.9, label="pneumonia"
    )
    prediction.heatmap.save("h.png", ContentFile(b"secret heatmap"), save=False)
    prediction.save()
    return case


def case_urls(case):
    return [
        "/",
        "/?reading=pneumonia&page=1",
        "/upload/",
        f"/cases/{case.pk}/",
        f"/cases/{case.pk}/status.json",
        *(f"/cases/{case.pk}/image/{kind}/" for kind in ("original", "display", "thumbnail")),
        f"/cases/{case.pk}/image/heatmap/",
    ]


def test_anonymous_users_are_redirected_to_login_everywhere(client, case):
    for url in case_urls(case):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url
    for url in ("/upload/", f"/cases/{case.pk}/rerun/"):
        response = client.post(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert case.predictions.count() == 1


def test_logged_in_staff_see_every_case(client, case, django_user_model):
    colleague = django_user_model.objects.create_user("colleague", password="x" * 20)
    client.force_login(colleague)
    for url in case_urls(case):
        assert client.get(url).status_code == 200, url


def test_media_is_not_served_from_a_public_url(client, case):
    for name in (case.original.name, case.display_image.name):
        assert client.get(f"/media/{name}").status_code in (302, 404)


def test_post_forms_require_csrf(staff_user, case):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    assert client.post(f"/cases/{case.pk}/rerun/").status_code == 403
    assert client.post("/upload/").status_code == 403
    for url in ("/upload/", f"/cases/{case.pk}/"):
        assert "csrfmiddlewaretoken" in client.get(url).content.decode(), url


# --------------------------------------------------------------------------------------
# Sign-in lockout (diagnoses.signin)
# --------------------------------------------------------------------------------------
def sign_in(client, username, password, path="/accounts/login/"):
    return client.post(path, {"username": username, "password": password})


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_repeated_failed_sign_ins_lock_the_account_on_every_sign_in_page(django_user_model, path):
    from diagnoses import signin

    django_user_model.objects.create_user("ward", password="right-horse-battery", is_staff=True)
    for _ in range(signin.MAX_FAILURES):
        response = sign_in(Client(), "ward", "wrong", path)
        assert response.status_code == 200 and "Too many failed" not in response.content.decode()
    # Now even the right password is refused, with the reason, on both pages.
    for page in ("/accounts/login/", "/admin/login/"):
        response = sign_in(Client(), "ward", "right-horse-battery", page)
        assert response.status_code == 200
        assert "Too many failed sign-ins for this account" in response.content.decode()
    assert signin.is_locked_out(" WARD ")  # one account, however its name is typed
    assert signin.SignInFailure.objects.count() == signin.MAX_FAILURES  # retries add none
    # The backend refuses too, so no other sign-in path gets round it.
    from django.contrib.auth import authenticate

    assert authenticate(username="ward", password="right-horse-battery") is None


def test_attempts_in_flight_count_before_their_passwords_are_checked():
    """Parallel requests cannot each slip under the limit: an attempt is counted first."""
    from diagnoses import signin

    in_flight = [signin.reserve_attempt("ward") for _ in range(signin.MAX_FAILURES)]
    assert None not in in_flight
    assert signin.reserve_attempt("ward") is None
    signin.release_attempt(in_flight[0])  # one of them had the right password
    assert signin.reserve_attempt("ward") is not None


def test_the_unlock_command_forgets_an_accounts_failures(django_user_model):
    import io

    from django.core.management import call_command

    from diagnoses import signin

    for _ in range(signin.MAX_FAILURES):
        signin.reserve_attempt("ward")
    out = io.StringIO()
    call_command("unlock", "Ward", stdout=out)
    assert "5 failed sign-in(s) forgotten" in out.getvalue()
    assert not signin.is_locked_out("ward")


def test_the_lockout_ends_and_a_sign_in_clears_the_count(django_user_model):
    from datetime import timedelta

    from django.utils import timezone

    from diagnoses import signin
    from diagnoses.models import SignInFailure

    django_user_model.objects.create_user("ward", password="right-horse-battery")
    for _ in range(signin.MAX_FAILURES):
        sign_in(Client(), "ward", "wrong")
    SignInFailure.objects.update(at=timezone.now() - signin.LOCKOUT - timedelta(seconds=1))
    response = sign_in(Client(), "ward", "right-horse-battery")
    assert response.status_code == 302
    assert not SignInFailure.objects.filter(username="ward").exists()


def test_a_wrong_password_still_gets_the_usual_message(django_user_model):
    django_user_model.objects.create_user("ward", password="right-horse-battery")
    body = sign_in(Client(), "ward", "wrong").content.decode()
    assert "Your username and password didn" in body


def test_an_administrator_sees_the_failures_and_can_unlock_an_account(django_user_model, client):
    from django.contrib.auth.models import Permission

    from diagnoses import signin
    from diagnoses.models import SignInFailure

    django_user_model.objects.create_user("ward", password="right-horse-battery")
    for _ in range(signin.MAX_FAILURES):
        sign_in(Client(), "ward", "wrong")
    staff = django_user_model.objects.create_user("helper", password="x-" * 8, is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__endswith="signinfailure"))
    client.force_login(staff)  # attempted names can be mistyped passwords: superusers only
    assert client.get("/admin/diagnoses/signinfailure/").status_code == 403
    admin_user = django_user_model.objects.create_superuser("boss", password="x-" * 8)
    client.force_login(admin_user)
    assert "ward" in client.get("/admin/diagnoses/signinfailure/").content.decode()
    ids = list(SignInFailure.objects.values_list("pk", flat=True))
    client.post(
        "/admin/diagnoses/signinfailure/",
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )
    assert not signin.is_locked_out("ward")
    assert sign_in(Client(), "ward", "right-horse-battery").status_code == 302
