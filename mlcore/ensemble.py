"""Average trained models into one: `python -m mlcore.ensemble --data DIR --out DIR MEMBER...`.

The members must share their input preprocessing and their validation carve. The result
is an ordinary model directory (one Keras graph, mlcore.model.build_ensemble) whose
threshold is picked on that carve by the members' own rule, applied to the averaged scores.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from mlcore import data as datasets
from mlcore.evaluate import summary_line
from mlcore.metrics import binary_metrics, pick_threshold
from mlcore.model import build_ensemble
from mlcore.provenance import environment
from mlcore.serialization import MODEL_FILE, TRAIN_REPORT, ModelMetadata
from mlcore.train import add_dataset_and_output_arguments, save_validated_model


def _only(values: list, what: str):
    if len(set(values)) != 1:
        raise ValueError(f"the members differ in {what}: {values}")
    return values[0]


def merged_config(configs: Sequence[dict]) -> dict:
    """The members' training settings: one value where they agree, a list where they differ.

    Per-run settings (where it was written, time limits, subsets) do not describe the
    ensemble and are left out.
    """
    per_run = {"out", "version", "max_seconds", "limit_per_class", "cache_dir", "init_model"}
    merged = {}
    for key in configs[0]:
        if key in per_run:
            continue
        values = [config.get(key) for config in configs]
        merged[key] = values[0] if all(v == values[0] for v in values) else values
    return merged


def ensemble_models(
    members: Sequence[Path],
    data_root: Path,
    out: Path,
    version: str | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Write the averaged model to `out` and return its validation report."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    if any(Path(out).resolve() == Path(m).resolve() for m in members):
        raise ValueError(f"{out} is one of the members; write the ensemble elsewhere")
    started = time.perf_counter()
    reports = [json.loads((Path(m) / TRAIN_REPORT).read_text()) for m in members]
    configs = [r["config"] for r in reports]
    preprocessing = _only([ModelMetadata.read(m).preprocessing for m in members], "preprocessing")
    split_seed = _only([c["split_seed"] for c in configs], "validation carve seed")
    fraction = _only([c["val_fraction"] for c in configs], "validation carve fraction")
    min_sensitivity = _only([c["min_sensitivity"] for c in configs], "threshold rule")

    models = [keras.models.load_model(Path(m) / MODEL_FILE, compile=False) for m in members]
    ensemble = build_ensemble(models)
    _, carve = datasets.carve_validation(
        datasets.list_split(data_root, "train"), fraction=fraction, seed=split_seed
    )
    pixels, labels = datasets.load_arrays(carve, preprocessing, cache_dir)
    scores = ensemble.predict(pixels.astype(np.float32), batch_size=64, verbose=0).ravel()
    threshold = pick_threshold(labels, scores, min_sensitivity)
    metrics = binary_metrics(labels, scores, threshold)
    version = version or out.name
    report = {
        "split": reports[0]["split"],
        "metrics": metrics,
        "threshold_rule": reports[0]["threshold_rule"],
        "data": {
            **reports[0]["data"],
            "validation": {
                "normal": int((labels == 0).sum()),
                "pneumonia": int((labels == 1).sum()),
            },
            "validation_patients": len({s.patient for s in carve}),
        },
        "training": {
            "seconds": round(sum(r["training"]["seconds"] for r in reports), 1),
            "epochs_run": [r["training"]["epochs_run"] for r in reports],
            "ensemble_seconds": round(time.perf_counter() - started, 1),
        },
        "config": {
            **merged_config(configs),
            "out": str(out),
            "version": version,
            "ensemble_members": [Path(m).name for m in members],
        },
        "members": [
            {"version": Path(m).name, "validation": r["metrics"]}
            for m, r in zip(members, reports, strict=True)
        ],
        "environment": environment(),
    }
    metadata = ModelMetadata(version, threshold, preprocessing)
    save_validated_model(ensemble, out, metadata, report, (labels, scores))
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_dataset_and_output_arguments(parser)
    parser.add_argument("members", type=Path, nargs="+", help="trained model directories")
    args = parser.parse_args(argv)
    report = ensemble_models(args.members, args.data, args.out, args.version, args.cache_dir)
    print(f"{args.out} on the validation carve: {summary_line(report['metrics'])}")


if __name__ == "__main__":
    main()
