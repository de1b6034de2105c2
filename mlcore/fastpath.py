"""The single-image forward pass through TensorFlow Lite's interpreter (XNNPACK kernels).

bench/bench_inference.py measured it 2.4x faster than a traced `tf.function` for one image
on 2 CPU cores, with outputs within 1e-7 of Keras. It ships inside TensorFlow, so it costs
no new dependency; where it is missing, or the backend is not TensorFlow, callers fall
back to the traced function.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings

import numpy as np

logger = logging.getLogger(__name__)


class LiteForward:
    """Batch-of-one forward pass of a Keras model, converted once at construction."""

    def __init__(self, model):
        import tensorflow as tf

        size = model.input_shape[1]
        signature = [tf.TensorSpec((1, size, size, 1), tf.float32)]
        forward = tf.function(
            tf.autograph.experimental.do_not_convert(lambda x: model(x, training=False)),
            input_signature=signature,
        )
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [forward.get_concrete_function()], model
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the interpreter's deprecation notice
            self._interpreter = tf.lite.Interpreter(
                model_content=converter.convert(), num_threads=os.cpu_count() or 1
            )
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()  # one interpreter is not safe across threads

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self._interpreter.set_tensor(self._input, batch.astype(np.float32))
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()


def lite_forward_or_none(model, tolerance: float = 1e-4) -> LiteForward | None:
    """The Lite forward pass if it gives Keras' answer on a probe image, else None.

    The check is not a formality: the converter has produced NaN for some graphs (a
    network built without its augmentation layers, for one) while Keras was right.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    try:
        lite = LiteForward(model)
    except Exception:  # noqa: BLE001 - any conversion problem: use the traced function
        logger.warning("TensorFlow Lite conversion failed; using tf.function", exc_info=True)
        return None
    size = model.input_shape[1]
    probe = np.random.default_rng(0).integers(0, 256, (1, size, size, 1)).astype(np.float32)
    expected = np.asarray(model(probe, training=False))
    got = lite(probe)
    if not np.all(np.abs(got - expected) <= tolerance):  # also false for NaN
        logger.warning(
            "TensorFlow Lite output %s differs from Keras %s; using tf.function",
            got.ravel(),
            expected.ravel(),
        )
        return None
    return lite
