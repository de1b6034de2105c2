"""Grad-CAM: which regions of the X-ray drove the pneumonia score (TensorFlow backend)."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

from mlcore.model import explained_layer_names

OVERLAY_ALPHA = 0.45
# JPEG at quality 90 without chroma subsampling, so the heat's colour edges stay sharp.
OVERLAY_FORMATS = {"PNG": {"compress_level": 1}, "JPEG": {"quality": 90, "subsampling": 0}}


class GradCam:
    """Grad-CAM for one model; the gradient computation is traced once and reused.

    For an ensemble, each member's map is weighted by the gradient of the averaged score,
    and the maps are summed: the heat of what drove the reading the user sees.
    """

    def __init__(self, model):
        import keras
        import tensorflow as tf

        feature_outputs = [model.get_layer(name).output for name in explained_layer_names(model)]
        feature_model = keras.Model(model.inputs, [feature_outputs, model.outputs[0]])
        size = model.input_shape[1]

        @tf.function(input_signature=[tf.TensorSpec((1, size, size, 1), tf.float32)])
        def heat(batch):
            with tf.GradientTape() as tape:
                features, score = feature_model(batch, training=False)
                target = score[:, 0]
            gradients = tape.gradient(target, features)
            cam = tf.add_n(
                [
                    tf.reduce_sum(
                        maps * tf.reduce_mean(grads, axis=(1, 2))[:, tf.newaxis, tf.newaxis, :],
                        axis=-1,
                    )
                    for maps, grads in zip(features, gradients, strict=True)
                ]
            )
            return target[0], tf.nn.relu(cam)[0]

        self._heat = heat

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """A coarse map in [0, 1] for one preprocessed (S, S, 1) uint8 image."""
        return self.score_and_map(pixels)[1]

    def score_and_map(self, pixels: np.ndarray) -> tuple[float, np.ndarray]:
        """The model's output and the map, from one forward pass (the map needs it anyway)."""
        score, cam = self._heat(pixels[np.newaxis].astype(np.float32))
        cam = cam.numpy()
        peak = float(cam.max())
        return float(score), cam / peak if peak > 0 else cam


@functools.cache
def _jet_palette() -> list[int]:
    """matplotlib's 'jet' map (blue = cold, red = hot) as a 256-colour Pillow palette."""
    from matplotlib import colormaps

    colours = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return colours.ravel().tolist()


def overlay(
    image: Image.Image,
    cam: np.ndarray,
    alpha: float = OVERLAY_ALPHA,
    box: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """Blend the heat map over the grayscale image, weighting the heat by its own strength.

    `box` is the part of the image the model saw (a crop to the body); the heat goes there.
    Done with Pillow's C routines (palette lookup, per-pixel composite): on a film-sized
    image this is several times faster than the same arithmetic in NumPy.
    """
    left, top, right, bottom = box or (0, 0, *image.size)
    heat = Image.new("L", image.size, 0)
    heat.paste(
        Image.fromarray((cam * 255).astype(np.uint8)).resize(
            (right - left, bottom - top), Image.Resampling.BICUBIC
        ),
        (left, top),
    )
    colours = heat.copy()
    colours.putpalette(_jet_palette())
    weight = heat.point([round(value * alpha) for value in range(256)])
    return Image.composite(colours.convert("RGB"), image.convert("RGB"), weight)


def encode_overlay(
    image: Image.Image,
    cam: np.ndarray,
    box: tuple[int, int, int, int] | None = None,
    image_format: str = "PNG",
) -> bytes:
    """The overlay as PNG (lossless) or JPEG (OVERLAY_FORMATS). JPEG encodes a film-sized
    overlay many times faster than PNG at zlib level 1, into a much smaller file
    (bench/bench_reading_parts.py)."""
    check_overlay_format(image_format)
    buffer = io.BytesIO()
    overlay(image.convert("L"), cam, box=box).save(
        buffer, format=image_format, **OVERLAY_FORMATS[image_format]
    )
    return buffer.getvalue()


def check_overlay_format(image_format: str) -> None:
    if image_format not in OVERLAY_FORMATS:
        raise ValueError(
            f"overlay format must be one of {sorted(OVERLAY_FORMATS)}, not {image_format!r}"
        )
