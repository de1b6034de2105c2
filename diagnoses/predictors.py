"""Load a registered model version for inference, once per process.

The model file lives in storage (local or S3); a worker copies it into
settings.PNEUMOSITE_MODEL_CACHE_DIR/<name>/ and loads it from there. Loading happens
lazily on the first prediction, in the pool child process, never at import time: a
TensorFlow runtime created in the Celery parent would not survive the fork.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

from django.conf import settings

from diagnoses.models import ModelVersion
from mlcore.serialization import ModelMetadata

MAX_LOADED_MODELS = 2
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_lock = threading.Lock()
_loaded: OrderedDict[str, object] = OrderedDict()


def get_predictor(model_version: ModelVersion):
    """The mlcore Predictor for `model_version`, loaded on first use in this process."""
    with _lock:
        predictor = _loaded.get(model_version.name)
        if predictor is not None:
            _loaded.move_to_end(model_version.name)
            return predictor
        from mlcore.inference import Predictor  # heavy import (TensorFlow): only when needed

        predictor = Predictor.load(
            ensure_local_model_dir(model_version), max_pixels=settings.PNEUMOSITE_MAX_PIXELS
        )
        _loaded[model_version.name] = predictor
        # A new active version makes older ones idle; keep memory bounded.
        while len(_loaded) > MAX_LOADED_MODELS:
            _loaded.popitem(last=False)
        return predictor


def ensure_local_model_dir(model_version: ModelVersion) -> Path:
    """model.keras (from storage) and model.json (from the DB row) in the local cache."""
    if not SAFE_NAME.fullmatch(model_version.name):
        raise ValueError(f"unsafe model version name for a cache folder: {model_version.name!r}")
    target = Path(settings.PNEUMOSITE_MODEL_CACHE_DIR) / model_version.name
    metadata = model_version.metadata()
    if _is_complete(target, metadata):
        return target
    # Built in a private folder and renamed into place, so that concurrent workers never
    # load a half-written file.
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    staging.mkdir(parents=True)
    try:
        with model_version.model_file.open("rb") as src, open(staging / "model.keras", "wb") as dst:
            shutil.copyfileobj(src, dst, length=1024 * 1024)
        metadata.write(staging)
        if _is_complete(target, metadata):
            return target  # another process installed it meanwhile: never pull it away
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "model.keras").is_file():  # another process did not win either
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_complete(target: Path, metadata: ModelMetadata) -> bool:
    """The folder holds this model: compared as metadata, so an older model.json that lacks
    the newer keys (and means their defaults) still counts."""
    if not (target / "model.keras").is_file():
        return False
    try:
        return ModelMetadata.read(target) == metadata
    except (OSError, ValueError, KeyError, TypeError):
        return False
