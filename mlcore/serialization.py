"""A model directory: model.keras plus model.json (version, threshold, input preprocessing)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlcore.preprocess import Preprocessing

MODEL_FILE = "model.keras"
METADATA_FILE = "model.json"
TRAIN_REPORT = "train_metrics.json"  # validation metrics, data counts, training settings


@dataclass(frozen=True)
class ModelMetadata:
    version: str
    threshold: float
    preprocessing: Preprocessing

    @classmethod
    def from_dict(cls, raw: dict) -> ModelMetadata:
        return cls(
            version=str(raw["version"]),
            threshold=float(raw["threshold"]),
            preprocessing=Preprocessing.from_settings(raw),
        )

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "threshold": self.threshold,
            **self.preprocessing.as_settings(),
        }

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelMetadata:
        return cls.from_dict(json.loads((Path(model_dir) / METADATA_FILE).read_text()))

    def write(self, model_dir: str | Path) -> None:
        (Path(model_dir) / METADATA_FILE).write_text(json.dumps(self.as_dict(), indent=2) + "\n")


def save_model_dir(model, out: Path, metadata: ModelMetadata) -> None:
    """Save weights and architecture only: the optimizer state would triple the file size."""
    import keras

    out.mkdir(parents=True, exist_ok=True)
    uncompiled = keras.Model(model.inputs, model.outputs, name=model.name)  # shares the weights
    uncompiled.save(out / MODEL_FILE)
    metadata.write(out)
