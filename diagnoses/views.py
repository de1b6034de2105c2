"""Thin views: parse the request, call a service or selector, render."""

from __future__ import annotations

from pathlib import PurePosixPath

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from diagnoses import selectors, services
from diagnoses.file_responses import CACHE_FOR_AN_HOUR, REVALIDATE, stored_file_response
from diagnoses.forms import HistoryFilterForm, UploadForm
from diagnoses.models import Case

HISTORY_PAGE_SIZE = 25
IMAGE_KINDS = {
    "original": "original",
    "display": "display_image",
    "thumbnail": "thumbnail",
}


@require_GET
def history(request):
    form = HistoryFilterForm(request.GET or None)
    cases = selectors.case_history(form.to_filters() if form.is_bound else None)
    page = Paginator(cases, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "diagnoses/history.html",
        {"form": form, "page": page, "query": query.urlencode()},
    )


@require_http_methods(["GET", "POST"])
def upload(request):
    form = UploadForm(request.POST or None, request.FILES or None)
    rejected = []
    if request.method == "POST" and form.is_valid():
        try:
            outcome = services.upload_cases(
                files=form.cleaned_data["files"],
                uploaded_by=request.user,
                reference=form.cleaned_data["reference"],
                note=form.cleaned_data["note"],
            )
        except services.NoActiveModel as exc:
            form.add_error(None, str(exc))
        else:
            rejected = [f"{name}: {message}" for name, message in outcome.rejected]
            if outcome.cases:
                messages.success(
                    request,
                    f"{len(outcome.cases)} image(s) uploaded; the reading is being computed.",
                )
                for line in rejected:
                    messages.error(request, line)
                if len(outcome.cases) == 1:
                    return redirect("diagnoses:case", case_id=outcome.cases[0].pk)
                return redirect("diagnoses:history")
    return render(request, "diagnoses/upload.html", {"form": form, "rejected": rejected})


@require_GET
def case_detail(request, case_id: int):
    case = _get_case_or_404(case_id)
    latest = selectors.latest_prediction(case)
    return render(
        request,
        "diagnoses/case_detail.html",
        {
            "case": case,
            "current": selectors.current_prediction(case),
            "latest": latest,
            "predictions": selectors.case_predictions(case),
            "review": selectors.current_review(case),
        },
    )


@require_GET
def case_status(request, case_id: int):
    case = get_object_or_404(Case, pk=case_id)
    return JsonResponse(selectors.prediction_status(case))


@require_POST
def case_rerun(request, case_id: int):
    case = get_object_or_404(Case, pk=case_id)
    try:
        prediction, created = services.rerun_prediction(case=case)
    except services.NoActiveModel as exc:
        messages.error(request, str(exc))
    else:
        if created:
            messages.success(request, f"Re-running with model {prediction.model_version.name}.")
        else:
            messages.info(request, "A prediction with the active model is already pending.")
    return redirect("diagnoses:case", case_id=case.pk)


@require_GET
def case_image(request, case_id: int, kind: str):
    case = get_object_or_404(Case, pk=case_id)
    if kind == "heatmap":
        current = selectors.current_prediction(case)
        stored = current.heatmap if current else None
    elif kind in IMAGE_KINDS:
        stored = getattr(case, IMAGE_KINDS[kind])
    else:
        raise Http404("Unknown image kind.")
    if not stored:
        raise Http404("No such image.")
    return stored_file_response(
        stored.storage,
        stored.name,
        download_name=_download_name(case, kind, stored.name),
        cache_control=REVALIDATE if kind == "heatmap" else CACHE_FOR_AN_HOUR,
    )


def _get_case_or_404(case_id: int) -> Case:
    try:
        return selectors.case_detail(case_id)
    except Case.DoesNotExist:
        raise Http404("No such case.") from None


def _download_name(case: Case, kind: str, stored_name: str) -> str:
    if kind == "original":  # stored without an extension
        extension = {"JPEG": ".jpg", "PNG": ".png", "DICOM": ".dcm"}[case.image_format]
        return f"case-{case.pk}{extension}"
    # Thumbnails are JPEG; display images and heatmaps JPEG or PNG (older ones all PNG).
    return f"case-{case.pk}-{kind}{PurePosixPath(stored_name).suffix}"
