"""A model directory: model.keras plus model.json (version, threshold, input preprocessing)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.keras"
METADATA_FILE = "model.json"


@dataclass(frozen=True)
class ModelMetadata:
    version: str
    threshold: float
    image_size: int
    normalization: str = "equalize"  # models saved before CLAHE existed have no such key

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelMetadata:
        raw = json.loads((Path(model_dir) / METADATA_FILE).read_text())
        return cls(
            version=raw["version"],
            threshold=float(raw["threshold"]),
            image_size=int(raw["image_size"]),
            normalization=raw.get("normalization", "equalize"),
        )


def save_model_dir(
    model,
    out: Path,
    version: str,
    threshold: float,
    image_size: int,
    normalization: str = "equalize",
) -> None:
    """Save weights and architecture only: the optimizer state would triple the file size."""
    import keras

    out.mkdir(parents=True, exist_ok=True)
    uncompiled = keras.Model(model.inputs, model.outputs, name=model.name)  # shares the weights
    uncompiled.save(out / MODEL_FILE)
    metadata = {
        "version": version,
        "threshold": threshold,
        "image_size": image_size,
        "normalization": normalization,
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
