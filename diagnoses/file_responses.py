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
        return redirect(_signed_url(storage, name, download_name))
    try:
        handle = storage.open(name, "rb")
    except FileNotFoundError:
        raise Http404("The stored file is missing.") from None
    response = FileResponse(handle, filename=download_name)
    response["Cache-Control"] = cache_control
    return response


def _signed_url(storage, name: str, download_name: str) -> str:
    """S3 names have no extension: ask S3 to send the file under its download name."""
    disposition = {"ResponseContentDisposition": f'inline; filename="{download_name}"'}
    try:
        return storage.url(name, parameters=disposition)
    except TypeError:  # a remote storage whose url() takes no parameters
        return storage.url(name)
