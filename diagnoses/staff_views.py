"""Staff pages: retraining (start, live progress, cancel) and agreement statistics.

Thin: a service or selector does the work. Every view needs is_staff plus, for changes, a
Django permission; others get 403 (anonymous users are sent to the login page by
LoginRequiredMiddleware).
"""

from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from diagnoses import retraining, selectors_staff
from diagnoses.models import RetrainingJob
from diagnoses.reviews import is_staff_with
from diagnoses.staff_forms import RetrainingForm

RECENT_JOBS = 20


def staff_required(perm: str | None = None):
    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not is_staff_with(request.user, perm):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


@require_http_methods(["GET", "POST"])
@staff_required()
def retraining_page(request):
    form = RetrainingForm(request.POST or None)
    if request.method == "POST":
        if not request.user.has_perm("diagnoses.add_retrainingjob"):
            raise PermissionDenied
        if form.is_valid():
            try:
                job = retraining.request_retraining(
                    user=request.user,
                    mode=form.cleaned_data["mode"],
                    epochs=form.cleaned_data["epochs"],
                    reviewed_since=form.cleaned_data["reviewed_since"],
                )
            except retraining.RetrainingRefused as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Retraining job {job.pk} queued.")
                return redirect("diagnoses:retraining_job", job_id=job.pk)
    return render(
        request,
        "diagnoses/staff/retraining.html",
        {
            "form": form,
            "active_job": selectors_staff.active_retraining_job(),
            "jobs": selectors_staff.retraining_jobs()[:RECENT_JOBS],
            "can_start": request.user.has_perm("diagnoses.add_retrainingjob"),
        },
    )


@require_GET
@staff_required()
def retraining_job(request, job_id: int):
    job = get_object_or_404(selectors_staff.retraining_jobs(), pk=job_id)
    return render(
        request,
        "diagnoses/staff/retraining_job.html",
        {
            "job": job,
            "status": selectors_staff.retraining_job_status(job),
            "can_cancel": request.user.has_perm("diagnoses.change_retrainingjob"),
        },
    )


@require_GET
@staff_required()
def retraining_job_status(request, job_id: int):
    job = get_object_or_404(selectors_staff.retraining_jobs(), pk=job_id)
    return JsonResponse(selectors_staff.retraining_job_status(job))


@require_POST
@staff_required("diagnoses.change_retrainingjob")
def retraining_job_cancel(request, job_id: int):
    job = get_object_or_404(RetrainingJob, pk=job_id)
    if job.is_active:
        job = retraining.request_cancel(job=job, user=request.user)
        messages.success(
            request,
            "Job cancelled."
            if job.status == RetrainingJob.Status.CANCELLED
            else "Cancellation requested; the job stops within seconds.",
        )
    else:
        messages.info(request, f"The job has already ended ({job.get_status_display()}).")
    return redirect("diagnoses:retraining_job", job_id=job.pk)


@require_GET
@staff_required()
def agreement(request):
    return render(
        request,
        "diagnoses/staff/agreement.html",
        {"stats": selectors_staff.agreement_statistics()},
    )
