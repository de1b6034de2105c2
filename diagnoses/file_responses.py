"""Serve stored files (X-rays, heatmaps, plots) only from views that checked the user."""

from __future__ import annotations

from django.http import FileResponse, Http404
from django.shortcuts import redirect

CACHE_FOR_AN_HOUR = "private, max-age=3600"
# The heatmap URL of a case shows its current reading's overlay, which a re-run replaces.
REVALIDATE = "private, no-cache"


def stored_file_response(storage, name: str, *, download_name: str, cache_control: str):
    """Stream a file from local storage, or redirect to a short-lived signed URL (S3)."""
    try:
        storage.path(name)
    except NotImplementedError:
        return redirect(storage.url(name))
    try:
        handle = storage.open(name, "rb")
    except FileNotFoundError:
        raise Http404("The stored file is missing.") from None
    response = FileResponse(handle, filename=download_name)
    response["Cache-Control"] = cache_control
    return response
