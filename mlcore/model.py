"""The pneumonia classifier: a small residual CNN on 224x224 grayscale input."""

from __future__ import annotations

import keras
from keras import layers

from mlcore.preprocess import IMAGE_SIZE


def build_augmenter(
    seed: int | None = None, strength: float = 1.0, aspect_jitter: float = 0.0
) -> keras.Sequential:
    """Augmentations that mimic differences between X-ray machines and positioning.

    `strength` scales every range (1.0 = the default recipe). `aspect_jitter` widens the
    zoom range of the width alone: pneumonia films in train/ are much wider than they are
    tall (median 1.50 against 1.21 for normal films), and once stretched to a square the
    chest's proportions alone would hint at the label.

    No horizontal flip: a flipped chest film puts the heart on the wrong side, an anatomy
    the classifier never meets in practice. Blur, noise, contrast and brightness cover the
    gap between the 224x224 re-encoded training copies and full-size uploads.
    """
    return keras.Sequential(
        [
            layers.RandomRotation(0.03 * strength, fill_mode="constant", seed=seed),
            layers.RandomZoom(
                (-0.1 * strength, 0.15 * strength),
                (-0.1 * strength - aspect_jitter, 0.15 * strength + aspect_jitter)
                if aspect_jitter
                else None,
                fill_mode="constant",
                seed=seed,
            ),
            layers.RandomTranslation(
                0.06 * strength, 0.06 * strength, fill_mode="constant", seed=seed
            ),
            layers.RandomContrast(min(0.9, 0.25 * strength), value_range=(0.0, 1.0), seed=seed),
            layers.RandomBrightness(min(0.9, 0.1 * strength), value_range=(0.0, 1.0), seed=seed),
            layers.RandomGaussianBlur(
                factor=0.5,
                kernel_size=3,
                sigma=(0.1, 1.2 * strength),
                value_range=(0.0, 1.0),
                seed=seed,
            ),
            layers.GaussianNoise(0.02 * strength, seed=seed),
        ],
        name="augment",
    )


def _conv_bn_relu(x, filters: int, kernel_size: int = 3, strides: int = 1, name: str = ""):
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _residual_stage(x, filters: int, name: str):
    """Halve the resolution, two 3x3 convolutions, with a 1x1 projected shortcut."""
    shortcut = layers.Conv2D(filters, 1, strides=2, use_bias=False, name=f"{name}_proj")(x)
    shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    x = _conv_bn_relu(x, filters, strides=2, name=f"{name}_a")
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_b_bn")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def build_model(
    image_size: int = IMAGE_SIZE,
    width: int = 24,
    dropout: float = 0.3,
    augment: bool = True,
    seed: int | None = None,
    augment_strength: float = 1.0,
    aspect_jitter: float = 0.0,
) -> keras.Model:
    """Input: (image_size, image_size, 1) pixel values 0..255. Output: P(pneumonia)."""
    inputs = keras.Input((image_size, image_size, 1), name="xray")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if augment:
        x = build_augmenter(seed, augment_strength, aspect_jitter)(x)
    x = _conv_bn_relu(x, width, kernel_size=5, strides=2, name="stem")
    for index, multiplier in enumerate((1, 2, 4, 8)):
        x = _residual_stage(x, width * multiplier, name=f"stage{index + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
    return keras.Model(inputs, outputs, name=f"pneumonia_cnn_w{width}")


def last_conv_layer_name(model: keras.Model) -> str:
    """The feature map Grad-CAM explains: the output of the last residual stage."""
    return [layer.name for layer in model.layers if layer.name.endswith("_out")][-1]
