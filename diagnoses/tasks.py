"""Celery tasks of the diagnoses app.

Only `ping` lives here for now; `run_prediction` (queue "inference") and
`run_retraining` (queue "training") are routed by name in settings.CELERY_TASK_ROUTES.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import shared_task


@shared_task(name="diagnoses.tasks.ping")
def ping(path: str | None = None, text: str = "pong") -> str:
    """Health-check task. When `path` is given, writes `text` to it atomically."""
    if path:
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    return text
