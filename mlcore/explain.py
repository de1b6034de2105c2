"""Grad-CAM: which regions of the X-ray drove the pneumonia score (TensorFlow backend)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mlcore.model import last_conv_layer_name
from mlcore.preprocess import preprocess_image

OVERLAY_ALPHA = 0.45


def gradcam(model, pixels: np.ndarray) -> np.ndarray:
    """A (S', S') map in [0, 1] for one preprocessed (S, S, 1) uint8 image."""
    import keras
    import tensorflow as tf

    feature_model = keras.Model(
        model.inputs, [model.get_layer(last_conv_layer_name(model)).output, model.outputs[0]]
    )
    batch = tf.constant(pixels[np.newaxis].astype(np.float32))
    with tf.GradientTape() as tape:
        features, score = feature_model(batch, training=False)
        target = score[:, 0]
    gradients = tape.gradient(target, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(features * weights[:, tf.newaxis, tf.newaxis, :], axis=-1))
    cam = cam[0].numpy()
    peak = float(cam.max())
    return cam / peak if peak > 0 else cam


def _colormap(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] to RGB uint8 with matplotlib's 'jet' (blue = cold, red = hot)."""
    from matplotlib import colormaps

    return (colormaps["jet"](values)[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """Blend the heat map over the grayscale image, weighting the heat by its own strength."""
    heat = Image.fromarray((cam * 255).astype(np.uint8)).resize(
        image.size, Image.Resampling.BICUBIC
    )
    heat_values = np.asarray(heat, dtype=np.float32) / 255.0
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = _colormap(heat_values).astype(np.float32)
    weight = (alpha * heat_values)[..., np.newaxis]
    blended = base * (1 - weight) + colours * weight
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), mode="RGB")


def gradcam_overlay_png(model, image: Image.Image, image_size: int) -> bytes:
    cam = gradcam(model, preprocess_image(image, image_size))
    buffer = io.BytesIO()
    overlay(image.convert("L"), cam).save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
