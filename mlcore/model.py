"""The pneumonia classifier: a small residual CNN on grayscale input, or an average of several."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from mlcore.layers import RandomCentreBrightness, RandomDetailGain
from mlcore.preprocess import IMAGE_SIZE


def build_augmenter(
    seed: int | None = None,
    strength: float = 1.0,
    aspect_jitter: float = 0.0,
    max_zoom_in: float = 0.1,
    centre_brightness: float = 0.0,
    detail_gain: float = 0.0,
) -> keras.Sequential:
    """Augmentations that mimic differences between X-ray machines and positioning.

    `strength` scales every range (1.0 = the default recipe). `aspect_jitter` widens the
    zoom range of the width alone: pneumonia films in train/ are much wider than they are
    tall (median 1.50 against 1.21 for normal films), and once stretched to a square the
    chest's proportions alone would hint at the label. `max_zoom_in` is how far a film may be
    magnified (Keras zoom factor, scaled by `strength`; 0.25 is up to 1.33x), for films
    framed tighter than training's. In round 4 of models/*/CANDIDATES.md it did not make
    tight framing safer, so it stays at its old default. `centre_brightness` (0: off)
    lightens or darkens the middle of the film alone (`RandomCentreBrightness`).
    `detail_gain` (0: off) softens or sharpens the film's detail by up to that factor
    (`RandomDetailGain`).

    No horizontal flip: a flipped chest film puts the heart on the wrong side, an anatomy
    the classifier never meets in practice. Blur, noise, contrast and brightness cover the
    gap between the 224x224 re-encoded training copies and the originals.
    """
    centre = [RandomCentreBrightness(centre_brightness, seed=seed)] if centre_brightness else []
    detail = [RandomDetailGain(detail_gain, seed=seed)] if detail_gain else []
    return keras.Sequential(
        [
            layers.RandomRotation(0.03 * strength, fill_mode="constant", seed=seed),
            layers.RandomZoom(
                (-max_zoom_in * strength, 0.15 * strength),
                (-max_zoom_in * strength - aspect_jitter, 0.15 * strength + aspect_jitter)
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
            *centre,
            *detail,
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


def _classifier(x, width: int, dropout: float, seed: int | None, prefix: str = ""):
    """Stem, four residual stages, pooling and the sigmoid unit; every name starts `prefix`."""
    x = _conv_bn_relu(x, width, kernel_size=5, strides=2, name=f"{prefix}stem")
    for index, multiplier in enumerate((1, 2, 4, 8)):
        x = _residual_stage(x, width * multiplier, name=f"{prefix}stage{index + 1}")
    x = layers.GlobalAveragePooling2D(name=f"{prefix}pool")(x)
    x = layers.Dropout(dropout, seed=seed, name=f"{prefix}dropout")(x)
    return layers.Dense(1, activation="sigmoid", name=f"{prefix}pneumonia")(x)


def build_model(
    image_size: int = IMAGE_SIZE,
    width: int = 24,
    dropout: float = 0.3,
    augment: bool = True,
    seed: int | None = None,
    augment_strength: float = 1.0,
    aspect_jitter: float = 0.0,
    max_zoom_in: float = 0.1,
    centre_brightness: float = 0.0,
    detail_gain: float = 0.0,
) -> keras.Model:
    """Input: (image_size, image_size, 1) pixel values 0..255. Output: P(pneumonia)."""
    inputs = keras.Input((image_size, image_size, 1), name="xray")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if augment:
        x = build_augmenter(
            seed, augment_strength, aspect_jitter, max_zoom_in, centre_brightness, detail_gain
        )(x)
    outputs = _classifier(x, width, dropout, seed)
    return keras.Model(inputs, outputs, name=f"pneumonia_cnn_w{width}")


def build_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """One graph that averages the members' P(pneumonia), with copies of their weights.

    Flat rather than nested (member i's layers are named `m{i}_...`), so Grad-CAM can reach
    every member's feature map and the whole ensemble saves, loads and converts like a
    single model. The first member's augmentation layers are kept: they do nothing at
    inference, and fine-tuning the ensemble then augments as training did.
    """
    if not members:
        raise ValueError("an ensemble needs members")
    if any(is_ensemble(member) for member in members):
        raise ValueError("average single models, not ensembles")
    if len({tuple(member.input_shape) for member in members}) != 1:
        raise ValueError("the members take inputs of different sizes")
    first = members[0]
    size = first.input_shape[1]
    inputs = keras.Input((size, size, 1), name="xray")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    names = {layer.name for layer in first.layers}
    if "augment" in names:
        x = keras.Sequential.from_config(first.get_layer("augment").get_config())(x)
    outputs = [
        _classifier(
            x,
            width=member.get_layer("stem_conv").filters,
            dropout=member.get_layer("dropout").rate,
            seed=None,
            prefix=f"m{index}_",
        )
        for index, member in enumerate(members)
    ]
    ensemble = keras.Model(
        inputs, layers.Average(name="pneumonia")(outputs), name=f"pneumonia_ensemble_{len(members)}"
    )
    for index, member in enumerate(members):
        for layer in member.layers:
            if layer.weights and layer.name != "augment":
                ensemble.get_layer(f"m{index}_{layer.name}").set_weights(layer.get_weights())
    return ensemble


def explained_layer_names(model: keras.Model) -> list[str]:
    """The feature maps Grad-CAM explains: the last residual stage of each member."""
    last_stage = {}
    for layer in model.layers:  # in graph order, so a member's last stage comes last
        prefix, found, rest = layer.name.rpartition("stage")
        if found and rest.endswith("_out"):
            last_stage[prefix] = layer.name
    return list(last_stage.values())


def is_ensemble(model: keras.Model) -> bool:
    """True for a graph made by build_ensemble (several members), false for one network."""
    return len(explained_layer_names(model)) > 1
