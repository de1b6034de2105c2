"""Sign-in lockout: after MAX_FAILURES failed sign-ins to one account within LOCKOUT, the
account cannot sign in until the oldest of them is LOCKOUT old.

It is enforced by the authentication backend (diagnoses.backends), so every sign-in
path (site, admin) obeys it; the sign-in forms also say why they refuse.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from diagnoses.models import SignInFailure

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
LOCKED_OUT_MESSAGE = (
    "Too many failed sign-ins for this account: try again in 15 minutes, or ask an "
    "administrator to unlock it (admin, Sign-in failures)."
)


def _key(username: str | None) -> str:
    return (username or "").strip().casefold()[:150]


def is_locked_out(username: str | None) -> bool:
    recent = SignInFailure.objects.filter(username=_key(username), at__gte=timezone.now() - LOCKOUT)
    return recent.count() >= MAX_FAILURES


def record_failure(username: str | None) -> None:
    """Count a failed sign-in (not while locked out: retries must not extend the lockout)."""
    if not _key(username) or is_locked_out(username):
        return
    SignInFailure.objects.filter(at__lt=timezone.now() - LOCKOUT).delete()
    SignInFailure.objects.create(username=_key(username))


def clear_failures(username: str | None) -> None:
    SignInFailure.objects.filter(username=_key(username)).delete()
