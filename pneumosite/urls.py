from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.urls import include, path

from diagnoses.signin_forms import SignInForm
from pneumosite.health import healthz

handler400 = "pneumosite.errors.bad_request"

# Media files (X-ray uploads) are deliberately not served publicly here; views that
# expose them must check permissions.
urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/login/", LoginView.as_view(authentication_form=SignInForm), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("diagnoses.urls")),
]
