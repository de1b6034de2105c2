"""Named training recipes: settings of `mlcore.train.TrainConfig` (no Keras import here)."""

# How the label-trained networks behind the shipped model were trained (round 13 of
# models/pneumonia-w32-20261126/CANDIDATES.md; the shipped student adds a teacher). A
# "train from scratch" retraining job uses it; TrainConfig's own defaults stay those of the
# first model, so that every command in CANDIDATES.md reproduces as written.
SHIPPED_RECIPE = {
    "crop_to_body": True,
    "normalize_detail": True,
    "detail_bands": 3,
    "detail_gain": 2.0,
    "framing_views": 1,
    "max_framing_zoom": 1.15,
    "width": 32,
    "epochs": 12,
}
