"""Where the mlcore tests find the dataset and the shipped model (no Django needed)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
DATASET = DATA_ROOT / "chest_xray"
# The 12 full-size samples of shared/data/samples/, copied byte for byte (see ATTRIBUTION.md),
# so that a clone without shared/ still runs every test that needs them.
SAMPLES = REPO_ROOT / "tests" / "fixtures" / "samples"
MODELS_DIR = REPO_ROOT / "models"


def shipped_model_dir() -> Path:
    """The newest model directory under models/ (each holds model.json + model.keras)."""
    candidates = sorted(p.parent for p in MODELS_DIR.glob("*/model.json"))
    assert candidates, f"no shipped model under {MODELS_DIR}"
    return candidates[-1]


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*/*.jpeg"))


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()
