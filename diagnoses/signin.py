"""Sign-in lockout: after MAX_FAILURES failed sign-ins to one account within LOCKOUT, the
account cannot sign in until the oldest of them is LOCKOUT old.

It is enforced by the authentication backend (diagnoses.backends), so every sign-in
path (site, admin) obeys it; the sign-in forms also say why they refuse. The lock is per
account, not per address: behind a proxy every client shares one address. So whoever
knows a user name can keep that account locked; an administrator unlocks it in the admin
or with `manage.py unlock USERNAME`.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from diagnoses.models import SignInFailure

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
LOCKED_OUT_MESSAGE = (
    "Too many failed sign-ins for this account: try again in 15 minutes, or ask an "
    "administrator to unlock it."
)
NO_ATTEMPT = 0  # the id of an attempt without a user name (nothing to count)


def _key(username: str | None) -> str:
    return (username or "").strip().casefold()[:150]


def _recent(key: str) -> int:
    return SignInFailure.objects.filter(username=key, at__gte=timezone.now() - LOCKOUT).count()


def is_locked_out(username: str | None) -> bool:
    return _recent(_key(username)) >= MAX_FAILURES


def reserve_attempt(username: str | None) -> int | None:
    """Count this sign-in as failed before its password is checked, so that attempts sent
    in parallel are counted too; returns the attempt's id for release_attempt, or None
    when the account is locked out (the attempt is then not counted)."""
    key = _key(username)
    if not key:
        return NO_ATTEMPT
    SignInFailure.objects.filter(at__lt=timezone.now() - LOCKOUT).delete()
    attempt = SignInFailure.objects.create(username=key)
    if _recent(key) > MAX_FAILURES:
        attempt.delete()
        return None
    return attempt.pk


def release_attempt(attempt_id: int) -> None:
    """The attempt succeeded: it was not a failure."""
    SignInFailure.objects.filter(pk=attempt_id).delete()


def clear_failures(username: str | None) -> int:
    """Unlock an account; returns how many failures were forgotten."""
    deleted, _ = SignInFailure.objects.filter(username=_key(username)).delete()
    return deleted
