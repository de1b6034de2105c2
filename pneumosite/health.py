"""GET /healthz: is this web process able to serve the site?

Checks the database (SELECT 1), the Celery broker (a connection with a short timeout),
the default storage (the S3 bucket answers, or the media folder is writable) and the
active model (a registered active ModelVersion whose file exists in storage).

Answers 200 {"status": "ok", ...} or 503 {"status": "fail", ...}; each check is "ok"
or "fail" ("missing" for the model when none is registered). Error details go to the
log, not to the (anonymous) client. The container healthcheck (scripts/healthcheck.py)
calls it over plain HTTP; settings.SECURE_REDIRECT_EXEMPT keeps it off the HTTPS
redirect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

logger = logging.getLogger("pneumosite.health")

BROKER_TIMEOUT_S = 3.0


def check_database() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        row = cursor.fetchone()
    if row is None or row[0] != 1:
        raise RuntimeError(f"SELECT 1 returned {row!r}")
    return "ok"


def check_broker() -> str:
    from pneumosite.celery import app

    conn = app.connection_for_write(
        connect_timeout=BROKER_TIMEOUT_S,
        transport_options={
            "socket_connect_timeout": BROKER_TIMEOUT_S,
            "socket_timeout": BROKER_TIMEOUT_S,
        },
    )
    try:
        # The Redis transport PINGs the server while connecting.
        conn.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0.5, timeout=BROKER_TIMEOUT_S
        )
    finally:
        conn.release()
    return "ok"


def check_storage() -> str:
    from django.core.files.storage import default_storage

    storage = default_storage
    bucket_name = getattr(storage, "bucket_name", None)
    if bucket_name:
        # S3: the bucket exists and these credentials may use it.
        storage.connection.meta.client.head_bucket(Bucket=bucket_name)
    elif hasattr(storage, "location") and hasattr(storage, "base_location"):
        # FileSystemStorage: the media folder exists and is writable.
        location = storage.location
        if not (os.path.isdir(location) and os.access(location, os.W_OK | os.X_OK)):
            raise RuntimeError(f"media folder {location} is missing or not writable")
    else:
        storage.exists("healthz-probe")
    return "ok"


def active_model_file() -> str | None:
    """Storage name of the active model's file, or None when no model is registered."""
    from diagnoses.models import ModelVersion

    version = ModelVersion.objects.filter(is_active=True).only("model_file").first()
    if version is None or not version.model_file:
        return None
    return version.model_file.name


def check_model() -> str:
    from django.core.files.storage import default_storage

    name = active_model_file()
    if name is None:
        return "missing"
    if not default_storage.exists(name):
        raise RuntimeError(f"active model file {name!r} is not in storage")
    return "ok"


CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "model": check_model,
}


def run_checks() -> dict[str, str]:
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception:  # noqa: BLE001 - any failure is reported as "fail"
            logger.warning("health check %s failed", name, exc_info=True)
            results[name] = "fail"
    return results


@login_not_required
@never_cache
@require_safe
def healthz(request):
    results = run_checks()
    healthy = all(value == "ok" for value in results.values())
    if not healthy:
        logger.warning("healthz failing: %s", results)
    return JsonResponse(
        {"status": "ok" if healthy else "fail", **results}, status=200 if healthy else 503
    )
