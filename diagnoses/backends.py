"""Django's model backend, refusing accounts that diagnoses.signin has locked out."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver

from diagnoses import signin


class LockoutModelBackend(ModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if signin.is_locked_out(username):
            raise PermissionDenied(signin.LOCKED_OUT_MESSAGE)  # stops every backend
        return super().authenticate(request, username=username, password=password, **kwargs)


@receiver(user_login_failed)
def _count_failure(sender, credentials, request=None, **kwargs):
    signin.record_failure(credentials.get(get_user_model().USERNAME_FIELD))


@receiver(user_logged_in)
def _forget_failures(sender, request, user, **kwargs):
    signin.clear_failures(user.get_username())
