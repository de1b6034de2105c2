"""Refuse request bodies larger than any acceptable upload batch, before they are read."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse


class RequestSizeLimitMiddleware:
    """413 for a body over PNEUMOSITE_MAX_REQUEST_BYTES, judged by its Content-Length.

    Django's own limits skip file parts, which are streamed to disk whatever their size;
    this runs before the CSRF check (the first reader of a POST body), so nothing is read.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.PNEUMOSITE_MAX_REQUEST_BYTES
        if length > limit:
            message = (
                f"The upload is {length / 2**20:.0f} MB; at most {limit / 2**20:.0f} MB can be "
                f"sent at once ({settings.DATA_UPLOAD_MAX_NUMBER_FILES} files of at most "
                f"{settings.PNEUMOSITE_MAX_UPLOAD_BYTES / 2**20:.0f} MB). Send fewer files."
            )
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
