"""Serve a trained model: one Predictor per process, loaded lazily, fast single-image path.

One image goes through TensorFlow Lite (mlcore.fastpath), batches through a traced
`tf.function`, a reading with its heatmap through Grad-CAM's own forward pass; all agree
with Keras within 1e-4 (tests/test_mlcore_model.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mlcore.fastpath import lite_forward_or_none
from mlcore.imageio import DEFAULT_MAX_PIXELS, decode_image, sniff_format
from mlcore.preprocess import scale_box
from mlcore.serialization import MODEL_FILE, ModelMetadata

LABEL_PNEUMONIA = "pneumonia"
LABEL_NORMAL = "normal"


@dataclass(frozen=True)
class Reading:
    probability: float  # P(pneumonia)
    label: str
    threshold: float
    model_version: str
    inference_ms: float  # image to reading; with its heatmap, the heatmap's gradients too


def _compiled_forward(model):
    """The fastest forward pass that gives the same numbers as Keras (see bench/).

    On TensorFlow a traced `tf.function` with a fixed signature skips Keras' per-call
    Python overhead (model.predict builds a dataset for every call). XLA gave no further
    gain on 2 CPU cores, so it stays off. Other backends use the plain call.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda batch: np.asarray(model(batch, training=False))
    import tensorflow as tf

    size = model.input_shape[1]
    signature = [tf.TensorSpec((None, size, size, 1), tf.float32)]
    traced = tf.function(lambda batch: model(batch, training=False), input_signature=signature)
    return lambda batch: traced(tf.constant(batch)).numpy()


class Predictor:
    """Holds one model in memory. Create it in the process that uses it (after fork)."""

    def __init__(self, model, metadata: ModelMetadata, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.model = model
        self.version = metadata.version
        self.threshold = metadata.threshold
        self.preprocessing = metadata.preprocessing
        self.max_pixels = max_pixels
        self._forward = _compiled_forward(model)
        self._gradcam = None
        # Built on first use: a worker that only reads with heatmaps never needs it.
        self._lite_lock = threading.Lock()
        self._lite_built = False
        self._lite = None

    def _single_forward(self):
        """The TensorFlow Lite forward pass, or None where it is missing or disagrees."""
        with self._lite_lock:
            if not self._lite_built:
                self._lite = lite_forward_or_none(self.model)
                self._lite_built = True
        return self._lite

    @property
    def image_size(self) -> int:
        return self.preprocessing.size

    @classmethod
    def load(cls, model_dir: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Predictor:
        import keras

        import mlcore.layers  # noqa: F401 - registers the custom layers saved models may use

        model = keras.models.load_model(Path(model_dir) / MODEL_FILE, compile=False)
        return cls(model, ModelMetadata.read(model_dir), max_pixels)

    def _as_image(self, image: bytes | Image.Image) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        return decode_image(bytes(image), max_pixels=self.max_pixels)

    def preprocess(self, image: bytes | Image.Image) -> np.ndarray:
        """The model's input for one image, as training prepared it."""
        return self.preprocessing(image, self.max_pixels)

    def probabilities(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """P(pneumonia) for preprocessed uint8 arrays of shape (N, S, S, 1)."""
        lite = self._single_forward() if len(pixels) == 1 else None
        if lite is not None:
            return lite(pixels.astype(np.float32)).ravel()
        outputs = [
            self._forward(pixels[start : start + batch_size].astype(np.float32))
            for start in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(outputs).ravel() if outputs else np.zeros(0, np.float32)

    def _reading(self, probability: float, elapsed_ms: float) -> Reading:
        label = LABEL_PNEUMONIA if probability >= self.threshold else LABEL_NORMAL
        return Reading(probability, label, self.threshold, self.version, elapsed_ms)

    def predict(self, image: bytes | Image.Image) -> Reading:
        started = time.perf_counter()
        pixels = self.preprocess(image)[np.newaxis]
        probability = float(self.probabilities(pixels)[0])
        return self._reading(probability, (time.perf_counter() - started) * 1000)

    def predict_batch(self, images, batch_size: int = 64) -> list[Reading]:
        started = time.perf_counter()
        pixels = np.stack([self.preprocess(image) for image in images])
        probabilities = self.probabilities(pixels, batch_size)
        per_image_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
        return [self._reading(float(p), per_image_ms) for p in probabilities]

    def explain(self, image: bytes | Image.Image, max_side: int | None = None) -> bytes:
        """Grad-CAM overlay PNG at the image's own size, or shrunk to fit `max_side`."""
        return self.predict_with_heatmap(image, max_side)[1]

    def predict_with_heatmap(
        self, image: bytes | Image.Image, max_side: int | None = None, image_format: str = "PNG"
    ) -> tuple[Reading, bytes]:
        """The reading and its Grad-CAM overlay (PNG or JPEG) from one preprocessing and
        one forward pass: the reading, the one `predict` gives, is the score Grad-CAM
        computes.

        The overlay is drawn on the image itself, at its size or shrunk to fit `max_side`
        pixels, which is much cheaper to encode for a full-size film.
        """
        from mlcore.explain import GradCam, check_overlay_format, encode_overlay

        check_overlay_format(image_format)
        whole = self._as_image(image)
        started = time.perf_counter()
        # A JPEG's bytes decode again at a reduced scale faster than the whole film shrinks
        # (and `predict` reads them so); any other film is shrunk from the one decode.
        film = self.preprocessing.source_film(
            image if _is_jpeg_file(image) else whole, self.max_pixels
        )
        pixels, box = self.preprocessing.with_box(film, self.max_pixels)
        if self._gradcam is None:
            self._gradcam = GradCam(self.model)
        probability, cam = self._gradcam.score_and_map(pixels)
        reading = self._reading(probability, (time.perf_counter() - started) * 1000)
        base = whole
        if max_side is not None and max(base.size) > max_side:
            base = base.copy()
            base.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        if box is not None:
            box = scale_box(box, film.size, base.size)
        return reading, encode_overlay(base, cam, box, image_format)


def _is_jpeg_file(image: bytes | Image.Image) -> bool:
    if not isinstance(image, bytes | bytearray | memoryview):
        return False
    return sniff_format(bytes(image)) == "JPEG"
