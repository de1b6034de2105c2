"""Load the active model in a new inference worker process before a reading needs it.

Loading a model and tracing its Grad-CAM takes seconds (5.7 s for the first reading of
`make run` with the six-network model, session 8), which the first upload after every
worker (re)start would otherwise wait for. The warm-up runs in a thread of the pool
process: the process takes tasks at once, and a reading that arrives early waits for the
same load (the predictor cache is locked), never for a second one.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from django.db import connection
from PIL import Image

from diagnoses.imaging import encode_jpeg

logger = logging.getLogger(__name__)

INFERENCE_QUEUE = "inference"


def should_warm(consumed_queues, enabled: bool) -> bool:
    """Only processes that take readings load the model: not the training worker's."""
    return enabled and INFERENCE_QUEUE in set(consumed_queues)


def warm_in_background() -> threading.Thread:
    def run() -> None:
        try:
            warm_active_model()
        finally:
            connection.close()  # this thread's own database connection

    thread = threading.Thread(target=run, name="model-warm-up", daemon=True)
    thread.start()
    return thread


def warm_active_model() -> str | None:
    """Load the active model and read one synthetic film through the worker's code path.

    Returns the version warmed, or None. Never raises: a failed warm-up only means the
    first reading loads the model itself, and reports the error to the user if it fails.
    """
    from diagnoses import services
    from diagnoses.predictors import get_predictor

    started = time.perf_counter()
    try:
        model_version = services.get_active_model_version()
        predictor = get_predictor(model_version)
        predictor.predict_with_heatmap(
            synthetic_upload(),
            max_side=services.HEATMAP_MAX_SIDE,
            image_format=services.HEATMAP_FORMAT,
        )
    except services.NoActiveModel:
        logger.info("model warm-up skipped: no model version is active")
        return None
    except Exception:  # noqa: BLE001 - see the docstring
        logger.warning("model warm-up failed; the first reading will load the model", exc_info=True)
        return None
    logger.info("warmed model %s in %.1f s", model_version.name, time.perf_counter() - started)
    return model_version.name


def synthetic_upload() -> bytes:
    """`synthetic_film` as the JPEG file a worker reads (large enough to be decoded at a
    reduced scale)."""
    return encode_jpeg(synthetic_film(), quality=75)


def synthetic_film(width: int = 640, height: int = 512) -> Image.Image:
    """A grey body on a dark background, so that every preprocessing step has work to do."""
    pixels = np.full((height, width), 12, np.uint8)
    rows, cols = np.mgrid[0:height, 0:width]
    pixels[height // 8 : -height // 8, width // 8 : -width // 8] = 110
    pixels = pixels + ((rows * 7 + cols * 3) % 23).astype(np.uint8)  # some detail
    return Image.fromarray(pixels)  # uint8, 2-D: mode "L"
