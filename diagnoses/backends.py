"""Django's model backend, refusing accounts that diagnoses.signin has locked out."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.signals import user_logged_in
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver

from diagnoses import signin


class LockoutModelBackend(ModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        attempt = signin.reserve_attempt(username)
        if attempt is None:
            raise PermissionDenied(signin.LOCKED_OUT_MESSAGE)  # stops every backend
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            signin.release_attempt(attempt)
        return user


@receiver(user_logged_in)
def _forget_failures(sender, request, user, **kwargs):
    signin.clear_failures(user.get_username())
