"""ONNX Runtime against the runtimes Predictor uses: `python bench/bench_onnx.py [--model DIR]`.

ONNX Runtime and the converter are not dependencies of the project, so they are installed
into a side folder for this benchmark only:

    .venv/bin/pip install --target var/onnx --no-deps onnxruntime onnx tf2onnx
    PYTHONPATH=var/onnx .venv/bin/python bench/bench_onnx.py

The model's inference graph (augmentation off, as Predictor traces it) is converted with
tf2onnx and run with ONNX Runtime's CPU provider on every core. Compared, in one process on
the same preprocessed sample films: one image against TensorFlow Lite (what Predictor uses
for one image), and a batch against the traced `tf.function` (what it uses for batches).
Prints a Markdown table, with the largest difference from Keras' output.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_inference import SAMPLES, percentile, timings_ms  # noqa: E402

from mlcore.fastpath import LiteForward  # noqa: E402
from mlcore.inference import Predictor  # noqa: E402


def onnx_session(model, size: int):
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((None, size, size, 1), tf.float32, name="xray")]
    forward = tf.function(lambda x: model(x, training=False), input_signature=spec)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        tf2onnx.convert.from_function(forward, input_signature=spec, output_path=str(path))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def measure(single, batched, films: np.ndarray, batch: np.ndarray, repeats: int):
    """Milliseconds per call: one film at a time (cycling through `films`), and `batch`."""
    cycle = iter(range(10**9))
    one = timings_ms(lambda: single(films[next(cycle) % len(films)][np.newaxis]), repeats)
    return one, timings_ms(lambda: batched(batch), max(repeats // 20, 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="default: the newest folder under models/")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    import tensorflow as tf

    newest = sorted(path.parent for path in (REPO / "models").glob("*/model.json"))[-1]
    predictor = Predictor.load(args.model or newest)
    model, size = predictor.model, predictor.image_size
    films = np.stack([predictor.preprocess(p.read_bytes()) for p in sorted(SAMPLES.glob("*/*"))])
    films = films.astype(np.float32)
    batch = np.resize(films, (args.batch, *films.shape[1:]))
    keras_output = np.asarray(model(batch, training=False))

    traced = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)],
    )
    onnx = onnx_session(model, size)
    print(f"model `{predictor.version}`, {os.cpu_count()} CPUs\n")
    print(f"| runtime | one image p50 / p95 ms | batch of {args.batch}: images/s | max diff |")
    print("|---|---:|---:|---:|")
    shipped = ("TensorFlow Lite (one image) / tf.function (batch)", LiteForward(model))
    for name, single, batched in (
        ("ONNX Runtime", onnx, onnx),
        (*shipped, lambda x: traced(tf.constant(x)).numpy()),
    ):
        one, many = measure(single, batched, films, batch, args.repeats)
        difference = float(np.max(np.abs(batched(batch) - keras_output)))
        print(
            f"| {name} | {percentile(one, 50):.2f} / {percentile(one, 95):.2f} | "
            f"{args.batch * 1000 / percentile(many, 50):.0f} | {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
