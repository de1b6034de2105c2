from django.urls import path

from diagnoses import staff_views, views

app_name = "diagnoses"

urlpatterns = [
    path("", views.history, name="history"),
    path("upload/", views.upload, name="upload"),
    path("cases/<int:case_id>/", views.case_detail, name="case"),
    path("cases/<int:case_id>/status.json", views.case_status, name="case_status"),
    path("cases/<int:case_id>/rerun/", views.case_rerun, name="case_rerun"),
    path("cases/<int:case_id>/image/<str:kind>/", views.case_image, name="case_image"),
    # ----------------------------------------------------------------------------------
    # Staff pages (reviews/retraining; diagnoses/staff_views.py)
    # ----------------------------------------------------------------------------------
    path("staff/retraining/", staff_views.retraining_page, name="retraining"),
    path("staff/retraining/<int:job_id>/", staff_views.retraining_job, name="retraining_job"),
    path(
        "staff/retraining/<int:job_id>/status.json",
        staff_views.retraining_job_status,
        name="retraining_job_status",
    ),
    path(
        "staff/retraining/<int:job_id>/cancel/",
        staff_views.retraining_job_cancel,
        name="retraining_job_cancel",
    ),
    path("staff/agreement/", staff_views.agreement, name="agreement"),
]
