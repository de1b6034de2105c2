from django.contrib import admin
from django.urls import include, path

# Media files (X-ray uploads) are deliberately not served publicly here; views that
# expose them must check permissions.
urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("diagnoses.urls")),
]
