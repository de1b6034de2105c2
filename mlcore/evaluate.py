"""Evaluate a saved model on a split: `python -m mlcore.evaluate --model DIR --data DIR`.

Writes <split>_metrics.json and ROC / confusion-matrix plots. The README's and model
cards' headline numbers come from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from mlcore import data as datasets
from mlcore.inference import Predictor
from mlcore.metrics import binary_metrics
from mlcore.plots import write_evaluation_plots
from mlcore.provenance import environment


def evaluate(
    model_dir: Path,
    data_root: Path,
    split: str = "test",
    out: Path | None = None,
    cache_dir: Path | None = None,
) -> dict:
    predictor = Predictor.load(model_dir)
    samples = datasets.list_split(data_root, split)
    pixels, labels = datasets.load_arrays(samples, predictor.preprocessing, cache_dir)
    started = time.perf_counter()
    scores = predictor.probabilities(pixels)
    seconds = time.perf_counter() - started
    metrics = binary_metrics(labels, scores, predictor.threshold)
    report = {
        "model_version": predictor.version,
        "split": split,
        "data_root": str(data_root),
        "metrics": metrics,
        "seconds": round(seconds, 2),
        "environment": environment(),
        "per_image": [
            {"file": s.path.name, "label": s.label, "probability": round(float(p), 6)}
            for s, p in zip(samples, scores, strict=True)
        ],
    }
    out = out or Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{split}_metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    write_evaluation_plots(labels, scores, metrics, out, f"{split}_")
    return report


def summary_line(metrics: dict) -> str:
    return (
        f"accuracy {metrics['accuracy']:.4f}  sensitivity {metrics['sensitivity']:.4f}  "
        f"specificity {metrics['specificity']:.4f}  AUC {metrics['auc']:.4f}  "
        f"threshold {metrics['threshold']:.4f}  n={metrics['n']}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout dataset root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, help="where to write (default: the model directory)")
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args(argv)
    report = evaluate(args.model, args.data, args.split, args.out, args.cache_dir)
    print(f"{report['model_version']} on {args.split}: {summary_line(report['metrics'])}")


if __name__ == "__main__":
    main()
