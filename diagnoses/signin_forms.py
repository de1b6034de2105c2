"""Sign-in forms that say when an account is locked out (diagnoses.signin)."""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from diagnoses import signin


class LockoutMessageMixin:
    def clean(self):
        if signin.is_locked_out(self.cleaned_data.get("username")):
            raise forms.ValidationError(signin.LOCKED_OUT_MESSAGE, code="locked_out")
        return super().clean()


class SignInForm(LockoutMessageMixin, AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "Your username and password didn't match. Please try again.",
    }


class AdminSignInForm(LockoutMessageMixin, AdminAuthenticationForm):
    pass
