"""TEST-ONLY hook loaded into a Celery worker by tests/test_faults.py (`--include faulthooks`).

Never imported by the application. In each pool process it wraps
diagnoses.services.compute_reading, which run_prediction calls after it has claimed the
prediction (status `running`) and before it saves the reading, so that a test can hold a
task "in the middle":

    PNEUMOSITE_FAULT_DIR/computing-<prediction id>   written when compute_reading starts
    PNEUMOSITE_FAULT_DIR/hold                        while it exists, compute_reading waits

The test then kills the worker or breaks the database, and removes `hold` (or not).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery.signals import worker_process_init

MAX_HOLD_SECONDS = 120


@worker_process_init.connect
def _install(**_kwargs) -> None:
    folder = os.environ.get("PNEUMOSITE_FAULT_DIR")
    if not folder:
        return
    from diagnoses import services

    original = services.compute_reading
    fault_dir = Path(folder)

    def compute_reading(prediction):
        (fault_dir / f"computing-{prediction.pk}").write_text(str(os.getpid()))
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        while (fault_dir / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return original(prediction)

    services.compute_reading = compute_reading
