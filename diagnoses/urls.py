from django.urls import path

from diagnoses import views

app_name = "diagnoses"

urlpatterns = [
    path("", views.history, name="history"),
    path("upload/", views.upload, name="upload"),
    path("cases/<int:case_id>/", views.case_detail, name="case"),
    path("cases/<int:case_id>/status.json", views.case_status, name="case_status"),
    path("cases/<int:case_id>/rerun/", views.case_rerun, name="case_rerun"),
    path("cases/<int:case_id>/image/<str:kind>/", views.case_image, name="case_image"),
]
