"""Inference benchmarks for mlcore: `python bench/bench_inference.py [--model DIR]`.

Measures, on the machine it runs on: model load time; single-image latency (p50/p95)
of each forward-pass variant (Keras model.predict, eager call, tf.function, tf.function
with XLA) and of the full Predictor.predict path (decode + preprocess + forward); batch
throughput; Grad-CAM latency; and the process's peak RSS. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlcore.fastpath import LiteForward  # noqa: E402
from mlcore.inference import Predictor  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO.parent / "shared" / "data" / "samples"


def timings_ms(function, repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        function()
    result = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        result.append((time.perf_counter() - started) * 1000)
    return result


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def row(name: str, values: list[float]) -> str:
    return f"| {name} | {percentile(values, 50):.2f} | {percentile(values, 95):.2f} |"


def forward_variants(model, size: int):
    import tensorflow as tf

    spec = [tf.TensorSpec((None, size, size, 1), tf.float32)]
    traced = tf.function(lambda x: model(x, training=False), input_signature=spec)
    xla = tf.function(lambda x: model(x, training=False), input_signature=spec, jit_compile=True)
    return {
        "Keras model.predict": lambda x: model.predict(x, verbose=0),
        "Keras eager call": lambda x: model(x, training=False).numpy(),
        "tf.function (used for batches)": lambda x: traced(tf.constant(x)).numpy(),
        "tf.function + XLA": lambda x: xla(tf.constant(x)).numpy(),
        "TensorFlow Lite, XNNPACK (used for one image)": LiteForward(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    model_dir = args.model or sorted(p.parent for p in (REPO / "models").glob("*/model.json"))[-1]

    started = time.perf_counter()
    predictor = Predictor.load(model_dir)
    load_s = time.perf_counter() - started
    files = sorted(SAMPLES.glob("*/*.jpeg"))
    blobs = [f.read_bytes() for f in files]
    single = predictor.preprocess(blobs[0])[np.newaxis].astype(np.float32)

    print(
        f"model `{predictor.version}` ({predictor.model.count_params():,} parameters), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(f"\nmodel load: {load_s:.2f} s\n")
    print("| single image, forward pass only | p50 ms | p95 ms |\n|---|---:|---:|")
    reference = predictor.model.predict(single, verbose=0).ravel()
    for name, forward in forward_variants(predictor.model, predictor.image_size).items():
        repeats = args.repeats // 4 if "predict" in name else args.repeats
        values = timings_ms(lambda f=forward: f(single), repeats)
        difference = float(np.max(np.abs(np.ravel(forward(single)) - reference)))
        print(f"{row(name, values)[:-1]}  (max diff vs predict {difference:.1e}) |")

    print("\n| full path, one full-size JPEG (decode + preprocess + forward) | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    cycle = iter(range(10**9))
    print(
        row(
            "Predictor.predict",
            timings_ms(lambda: predictor.predict(blobs[next(cycle) % len(blobs)]), args.repeats),
        )
    )
    explain_repeats = max(20, args.repeats // 5)
    overlays = (
        ("PNG at full size", None, "PNG"),
        ("PNG at most 1024 px", 1024, "PNG"),
        ("JPEG at most 1024 px, as the worker", 1024, "JPEG"),
    )
    for name, max_side, image_format in overlays:
        values = timings_ms(
            lambda m=max_side, f=image_format: predictor.predict_with_heatmap(
                blobs[next(cycle) % len(blobs)], max_side=m, image_format=f
            ),
            explain_repeats,
        )
        print(row(f"Predictor.predict_with_heatmap, overlay {name}", values))

    batch = np.repeat(single, args.batch, axis=0).astype(np.uint8)
    predictor.probabilities(batch)
    started, rounds = time.perf_counter(), 10
    for _ in range(rounds):
        predictor.probabilities(batch, batch_size=args.batch)
    per_second = rounds * args.batch / (time.perf_counter() - started)
    print(f"\nbatch throughput (preprocessed, batch {args.batch}): {per_second:.0f} images/s")
    started = time.perf_counter()
    for blob in blobs * 3:
        predictor.preprocess(blob)
    prep_ms = (time.perf_counter() - started) * 1000 / (3 * len(blobs))
    print(f"decode + preprocess of a full-size JPEG: {prep_ms:.1f} ms per image (one core)")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
