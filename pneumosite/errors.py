"""Error pages that say what went wrong in words a user can act on."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import TooManyFilesSent
from django.shortcuts import render


def bad_request(request, exception):
    """400: a batch over the file limit is refused before any view sees it (Django parses
    the body in the CSRF check), so the reason is given here."""
    if isinstance(exception, TooManyFilesSent):
        message = (
            f"At most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files can be uploaded at once; "
            "nothing was stored. Go back and send fewer files."
        )
    else:
        message = "The request could not be understood; nothing was changed."
    return render(request, "400.html", {"message": message}, status=400)
