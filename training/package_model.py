"""Turn a trained model directory into a shipped one under models/<version>/.

    python training/package_model.py --trained DIR --version NAME --data DATASET_ROOT

Copies the model, evaluates it once on test/ with mlcore.evaluate, records its readings
of the 12 full-size samples (a regression fixture for the tests) and writes MODEL_CARD.md
from the JSON files, so every number in the card comes from this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore.evaluate import evaluate, summary_line  # noqa: E402
from mlcore.inference import Predictor  # noqa: E402
from mlcore.preprocess import DATASET_SHORTER_SIDE  # noqa: E402
from mlcore.serialization import MODEL_FILE, TRAIN_REPORT, ModelMetadata  # noqa: E402
from mlcore.train import LABEL_SMOOTHING  # noqa: E402

KEEP = (MODEL_FILE, TRAIN_REPORT, "validation_roc.png", "validation_confusion.png")
KEEP_IF_PRESENT = ("history.json", "training.png")  # an ensemble has no training curves


def record_sample_readings(model_dir: Path, samples_root: Path) -> None:
    predictor = Predictor.load(model_dir)
    readings = {}
    for path in sorted(samples_root.glob("*/*.jpeg")):
        reading = predictor.predict(path.read_bytes())
        readings[path.name] = {
            "true": path.parent.name.lower(),
            "label": reading.label,
            "probability": round(reading.probability, 6),
        }
    payload = {"model_version": predictor.version, "readings": readings}
    (model_dir / "sample_readings.json").write_text(json.dumps(payload, indent=1) + "\n")


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def input_steps(config: dict) -> str:
    steps = [
        f"a film larger than the dataset's ({DATASET_SHORTER_SIDE} px shorter side) shrunk to it"
    ]
    if config.get("crop_to_body"):
        steps.append("black margins around the patient cut off")
    steps.append("stretched to a square")
    normalization = config.get("normalization", "equalize")
    steps.append("CLAHE-equalised" if normalization == "clahe" else "histogram-equalised")
    if config.get("normalize_detail"):
        bands = config.get("detail_bands", 1)
        scales = "fine detail" if bands == 1 else f"detail in {bands} bands of scale"
        steps.append(f"{scales} brought to one level (`normalize_detail`)")
    return ", ".join(steps)


def architecture(model, config: dict) -> str:
    """One line on the network, read from the model itself (a fine-tuned ensemble included)."""
    widths = [layer.filters for layer in model.layers if layer.name.endswith("stem_conv")]
    params = f"{model.count_params():,}"
    if len(widths) == 1:
        return f"Small residual CNN (`mlcore/model.py`, width {widths[0]}, {params} parameters)"
    seeds = config.get("seed")
    trained = f", trained alone with seeds {seeds}" if isinstance(seeds, list) else ""
    return (
        f"Average of {len(widths)} small residual CNNs (`mlcore/model.py`, `build_ensemble`; "
        f"widths {widths}, {params} parameters in all{trained}), served as one graph"
    )


def shape_weighting_phrase(config: dict) -> str:
    """How the recipe weighted films by their shape (`mlcore/balance.py`), for the card."""
    if config.get("estimate_film_shape"):
        return (
            " times film-shape weights (`mlcore/balance.py`: both classes share one "
            "distribution of aspect ratios; the shape of stretched copies guessed by "
            "`mlcore/shape_estimator.py`)"
        )
    if config.get("balance_film_shape"):
        return (
            " times film-shape weights (`mlcore/balance.py`: among the films whose shape is "
            "known, both classes share one distribution of aspect ratios)"
        )
    return ""


def targets_phrase(config: dict) -> str:
    """What the network learned to output: the labels, or another model's readings."""
    smoothing = f"label smoothing {LABEL_SMOOTHING}"
    teacher, weight = config.get("teacher"), config.get("teacher_weight", 1.0)
    if not teacher:
        return f"{smoothing}, balanced class weights"
    source = (
        f"the reading of `{Path(teacher).name}` (`mlcore/distill.py`: the teacher reads the "
        f"same augmented view, frozen)"
    )
    if weight < 1.0:
        source = f"{weight:g} parts {source} to {1 - weight:g} the labels ({smoothing})"
    return f"trained on {source}, balanced class weights"


def augmentation_phrase(config: dict) -> str:
    """The augmentations of `mlcore.model.build_augmenter` and the framing views the recipe
    used (an ensemble's config lists a value per member where the members differ)."""

    def show(value) -> str:
        return " / ".join(f"{v:g}" for v in _as_list(value))

    extras = []
    if any(_as_list(config.get("detail_gain"))):
        extras.append(f"detail softened or sharpened by up to {show(config['detail_gain'])}x")
    if any(_as_list(config.get("framing_views"))):
        extras.append(
            f"framing views ({show(config['framing_views'])} per film, up to "
            f"{show(config['max_framing_zoom'])}x tighter)"
        )
    extra = "".join(f", {item}" for item in extras)
    return f"rotation, zoom, shift, contrast, brightness, Gaussian blur and noise{extra}"


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def model_card(model_dir: Path, model) -> str:
    trained = json.loads((model_dir / TRAIN_REPORT).read_text())
    test = json.loads((model_dir / "test_metrics.json").read_text())
    val, tst = trained["metrics"], test["metrics"]
    config, data, env = trained["config"], trained["data"], test["environment"]
    size = config["image_size"]
    (tn, fp), (fn, tp) = tst["confusion_matrix"]["values"]
    rows = "\n".join(
        f"| {name} | {fmt(val[key])} | {fmt(tst[key])} |"
        for name, key, fmt in [
            ("accuracy", "accuracy", percent),
            ("sensitivity (pneumonia recall)", "sensitivity", percent),
            ("specificity", "specificity", percent),
            ("precision", "precision", percent),
            ("F1", "f1", lambda v: f"{v:.3f}"),
            ("ROC AUC", "auc", lambda v: f"{v:.4f}"),
        ]
    )
    closest = " (the closest to the teacher's readings)" if config.get("teacher") else ""
    return f"""# Model card: `{test["model_version"]}`

Generated by `training/package_model.py` from `train_metrics.json` (validation) and
`test_metrics.json` (written by `python -m mlcore.evaluate`). Rerun that script to check it.

**Not a medical device.** Decision support for pneumonia triage on pediatric chest X-rays;
a clinician must read every image.

## Data
Kermany DS, Zhang K, Goldbaum M, et al. *Identifying Medical Diagnoses and Treatable Diseases
by Image-Based Deep Learning.* Cell 2018;172(5):1122-1131. doi:10.1016/j.cell.2018.02.010.
Data: Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, licence CC BY 4.0 (a resized grayscale copy).

- Training: official `train/` split minus the validation carve: {data["train"]["normal"]} normal,
  {data["train"]["pneumonia"]} pneumonia images.
- Validation: {data["validation"]["normal"]} normal + {data["validation"]["pneumonia"]} pneumonia
  images of {data["validation_patients"]} patients, carved from `train/` by patient
  (seed {config["split_seed"]}, {config["val_fraction"]:.0%} of the eligible patients), and only
  from patients whose files are full-resolution originals, since `test/` is made of originals.
- Test: official `test/` split, {tst["n_normal"]} normal + {tst["n_pneumonia"]} pneumonia,
  evaluated once, after every choice was made on validation.

## Recipe
{architecture(model, config)} on
{size}x{size} grayscale input (`mlcore/preprocess.py`): {input_steps(config)}.
Augmentation: {augmentation_phrase(config)}; no
horizontal flip. AdamW (weight decay {config["weight_decay"]}), cosine learning-rate schedule,
{targets_phrase(config)}{shape_weighting_phrase(config)},
checkpoint with the lowest validation loss{closest}.
{{history}}

Operating threshold: {tst["threshold"]:.4f}, the {trained["threshold_rule"]}.

## Results
| metric | validation (carve of train) | test (official split) |
|---|---:|---:|
{rows}

Test confusion matrix (rows true, columns predicted):

| | predicted normal | predicted pneumonia |
|---|---:|---:|
| normal | {tn} | {fp} |
| pneumonia | {fn} | {tp} |

![ROC on test](test_roc.png) ![Confusion on test](test_confusion.png)

## Limits
- Trained on one hospital's pediatric (age 1-5) anteroposterior films; adults, other
  hospitals, lateral views and other diseases are out of scope and untested.
- The validation carve flatters: it comes from the same pool as training, and test/ is harder.
- Bacterial and viral pneumonia are one class; the model does not tell them apart.
- Grad-CAM heatmaps show what drove the score, not where the disease is.
- Framing can change the reading: check it with `training/framing_sensitivity.py`.
- Children with pneumonia in `train/` were imaged on smaller, wider films (they are younger)
  than healthy ones, so a model can learn to read a small child's film as sick. Check how
  far its scores follow film size within each class with `training/film_shape.py`.

Evaluated with Keras {env["keras"]} ({env["keras_backend"]}), Python {env["python"]},
git commit `{env["git_commit"]}`.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trained", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/chest_xray")
    parser.add_argument("--samples", type=Path, default=REPO.parent / "shared/data/samples")
    parser.add_argument("--history", default="", help="one line on how the model was trained")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "var/cache")
    args = parser.parse_args()
    target = REPO / "models" / args.version
    target.mkdir(parents=True, exist_ok=True)
    for name in KEEP + tuple(n for n in KEEP_IF_PRESENT if (args.trained / n).exists()):
        shutil.copy2(args.trained / name, target / name)
    dataclasses.replace(ModelMetadata.read(args.trained), version=args.version).write(target)
    report = evaluate(target, args.data, "test", cache_dir=args.cache_dir)
    print(f"test: {summary_line(report['metrics'])}")
    record_sample_readings(target, args.samples)
    card = model_card(target, Predictor.load(target).model).replace("{history}", args.history)
    (target / "MODEL_CARD.md").write_text(card)


if __name__ == "__main__":
    main()
