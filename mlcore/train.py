"""Train the pneumonia CNN: `python -m mlcore.train --data DIR --out DIR`.

Validation is carved patient-wise from train/ (never test/); the checkpoint with the lowest
validation loss is kept and the operating threshold is picked on validation.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from mlcore import data as datasets
from mlcore.balance import film_shape_weights
from mlcore.distill import (
    StudentAUC,
    check_teacher_weight,
    distillation_loss,
    load_teacher,
    with_teacher,
)
from mlcore.framing import RandomFraming
from mlcore.metrics import binary_metrics, pick_threshold
from mlcore.model import build_model
from mlcore.plots import plot_history, write_evaluation_plots
from mlcore.preprocess import IMAGE_SIZE, NORMALIZATIONS, Preprocessing
from mlcore.provenance import environment
from mlcore.serialization import MODEL_FILE, TRAIN_REPORT, ModelMetadata, save_model_dir
from mlcore.views import RandomViewBatches

EpochCallback = Callable[[int, int, dict], None]
LABEL_SMOOTHING = 0.05


class TrainingCancelled(RuntimeError):
    """Raised when `should_stop` asked the run to stop; nothing is written to `out`."""


@dataclass
class TrainConfig:
    data: Path
    out: Path
    version: str | None = None
    epochs: int = 40
    batch_size: int = 64
    image_size: int = IMAGE_SIZE
    normalization: str = "equalize"
    crop_to_body: bool = False
    normalize_detail: bool = False
    detail_bands: int = 1
    width: int = 24
    dropout: float = 0.3
    augment_strength: float = 1.0
    aspect_jitter: float = 0.0
    max_zoom_in: float = 0.1
    centre_brightness: float = 0.0
    detail_gain: float = 0.0
    framing_views: int = 0
    max_framing_zoom: float = 1.3
    balance_film_shape: bool = False
    estimate_film_shape: bool = False
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.35
    min_sensitivity: float = 0.98
    init_model: Path | None = None
    teacher: Path | None = None
    teacher_weight: float = 1.0
    limit_per_class: int | None = None
    max_seconds: float | None = None
    cache_dir: Path | None = None
    extra_samples: Sequence[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self):
        check_teacher_weight(self.teacher_weight)  # before the data are loaded
        if self.estimate_film_shape:  # estimating the shapes is only done to balance them
            self.balance_film_shape = True

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_settings(
            {name: getattr(self, name) for name in Preprocessing.SETTING_NAMES}
        )


def _limit(
    samples: list[datasets.Sample], per_class: int | None, seed: int
) -> list[datasets.Sample]:
    if per_class is None:
        return samples
    rng = np.random.default_rng(seed)
    kept = []
    for label in (0, 1):
        group = [s for s in samples if s.label == label]
        picked = rng.choice(len(group), size=min(per_class, len(group)), replace=False)
        kept += [group[i] for i in sorted(picked)]
    return kept


def _class_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights that give both classes the same total weight."""
    counts = np.bincount(labels.astype(int), minlength=2)
    per_class = len(labels) / (2 * np.maximum(counts, 1))
    return per_class[labels.astype(int)]


class _ProgressCallback(keras.callbacks.Callback):
    def __init__(
        self,
        total: int,
        on_epoch: EpochCallback | None,
        should_stop: Callable[[], bool] | None,
        deadline: float | None,
    ):
        super().__init__()
        self.total, self.on_epoch, self.should_stop = total, on_epoch, should_stop
        self.deadline = deadline
        self.cancelled = False
        self.epoch_seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._started)
        if self.on_epoch:
            self.on_epoch(epoch + 1, self.total, {k: float(v) for k, v in (logs or {}).items()})
        self._check_cancel()
        if self.deadline is not None and self._next_epoch_would_overrun():
            self.model.stop_training = True  # out of time: keep the best epoch so far

    def _next_epoch_would_overrun(self) -> bool:
        """Whether another epoch as long as the longest so far would end past the deadline."""
        return time.perf_counter() + max(self.epoch_seconds) > self.deadline

    def on_train_batch_end(self, batch, logs=None):
        if batch % 10 == 0:
            self._check_cancel()

    def _check_cancel(self):
        if self.should_stop and self.should_stop():
            self.cancelled = True
            self.model.stop_training = True


def _training_input(data: TrainingData, sample_weight: np.ndarray, config: TrainConfig) -> dict:
    """`model.fit`'s training arguments: the arrays, or with framing views, batches that show
    each film in one view drawn at random every epoch."""
    if data.x_train_reframed:
        views = [data.x_train, *data.x_train_reframed]
        batches = RandomViewBatches(
            views, data.y_train, sample_weight, config.batch_size, config.seed
        )
        return {"x": batches}
    return {
        "x": data.x_train.astype(np.float32),
        "y": data.y_train,
        "sample_weight": sample_weight,
        "batch_size": config.batch_size,
    }


def _compile(
    model: keras.Model, config: TrainConfig, steps_per_epoch: int, distilling: bool = False
) -> None:
    total_steps = max(1, config.epochs * steps_per_epoch)
    warmup = min(total_steps // 10, 3 * steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10 if warmup else config.learning_rate,
        decay_steps=total_steps - warmup,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.01,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss=(
            distillation_loss(config.teacher_weight, LABEL_SMOOTHING)
            if distilling
            else keras.losses.BinaryCrossentropy(label_smoothing=LABEL_SMOOTHING)
        ),
        metrics=[StudentAUC(name="auc") if distilling else keras.metrics.AUC(name="auc")],
    )


@dataclass
class TrainingData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    counts: dict
    train_samples: list[datasets.Sample]  # in x_train's order, reviewed extras last
    val_samples: list[datasets.Sample]
    x_train_reframed: list[np.ndarray] = field(default_factory=list)  # framing views 1..V


def _load_train_arrays(
    samples: list[datasets.Sample],
    extra: list[datasets.Sample],
    config: TrainConfig,
    framing: RandomFraming | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_arrays(samples, config.preprocessing, config.cache_dir, framing=framing)
    if extra:  # reviewed films: few, and not cached since their labels may change
        x_extra, y_extra = datasets.load_arrays(extra, config.preprocessing, framing=framing)
        x, y = np.concatenate([x, x_extra]), np.concatenate([y, y_extra])
    return x, y


def load_training_data(config: TrainConfig) -> TrainingData:
    """The training films and the patient-wise validation carve, decoded."""
    train_samples, val_samples = datasets.carve_validation(
        datasets.list_split(config.data, "train"),
        fraction=config.val_fraction,
        seed=config.split_seed,
    )
    train_samples = _limit(train_samples, config.limit_per_class, config.seed)
    val_samples = _limit(val_samples, config.limit_per_class, config.seed)
    extra = [datasets.Sample(Path(path), int(label)) for path, label in config.extra_samples]
    x_train, y_train = _load_train_arrays(train_samples, extra, config)
    reframed = [
        _load_train_arrays(
            train_samples, extra, config, RandomFraming(config.max_framing_zoom, view)
        )[0]
        for view in range(1, config.framing_views + 1)
    ]
    x_val, y_val = datasets.load_arrays(val_samples, config.preprocessing, config.cache_dir)
    counts = {
        "train": {"normal": int((y_train == 0).sum()), "pneumonia": int((y_train == 1).sum())},
        "validation": {"normal": int((y_val == 0).sum()), "pneumonia": int((y_val == 1).sum())},
        "extra_reviewed": len(extra),
        "validation_patients": len({s.patient for s in val_samples}),
    }
    return TrainingData(
        x_train, y_train, x_val, y_val, counts, train_samples + extra, val_samples, reframed
    )


def save_validated_model(
    model: keras.Model,
    out: Path,
    metadata: ModelMetadata,
    report: dict,
    validation: tuple[np.ndarray, np.ndarray],
) -> None:
    """The model folder: weights, model.json, train_metrics.json and validation plots."""
    save_model_dir(model, out, metadata)
    (out / TRAIN_REPORT).write_text(json.dumps(report, indent=2))
    labels, scores = validation
    write_evaluation_plots(labels, scores, report["metrics"], out, "validation_")


def add_dataset_and_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout dataset root")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--version", help="model version name (default: the out folder's name)")
    parser.add_argument("--cache-dir", type=Path, help="keep decoded arrays here between runs")


def _require_same_inputs(model_dir: Path, config: TrainConfig, use: str) -> None:
    base = ModelMetadata.read(model_dir).preprocessing
    if base != config.preprocessing:
        raise ValueError(
            f"{model_dir} was trained on inputs made by {base}; {use} with "
            f"the same options, not {config.preprocessing}"
        )


def train(
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train, pick the threshold on validation, and write the model directory to `config.out`."""
    if config.init_model:
        _require_same_inputs(config.init_model, config, "fine-tune it")
    if config.teacher:
        _require_same_inputs(config.teacher, config, "learn from it")
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    data = load_training_data(config)
    y_train, y_val, counts = data.y_train, data.y_val, data.counts
    log(f"data: {json.dumps(counts)} (loaded in {time.perf_counter() - started:.1f}s)")
    sample_weight = _class_weights(y_train)
    if config.balance_film_shape:
        shape_weights, counts["film_shape"] = film_shape_weights(
            data.train_samples,
            data.val_samples,
            estimate=config.estimate_film_shape,
            seed=config.seed,
            cache_dir=config.cache_dir,
            log=log,
        )
        sample_weight *= shape_weights
        keras.utils.set_random_seed(config.seed)  # the classifier starts as it would without
    if config.init_model:
        model = keras.models.load_model(Path(config.init_model) / MODEL_FILE)
        log(f"fine-tuning from {config.init_model}")
    else:
        model = build_model(
            config.image_size,
            width=config.width,
            dropout=config.dropout,
            seed=config.seed,
            augment_strength=config.augment_strength,
            aspect_jitter=config.aspect_jitter,
            max_zoom_in=config.max_zoom_in,
            centre_brightness=config.centre_brightness,
            detail_gain=config.detail_gain,
        )
    fitted = model
    if config.teacher:
        fitted = with_teacher(model, load_teacher(config.teacher))
        log(f"learning from {config.teacher} (teacher weight {config.teacher_weight})")
    x_val = data.x_val.astype(np.float32)
    steps = int(np.ceil(len(y_train) / config.batch_size))
    _compile(fitted, config, steps, distilling=bool(config.teacher))

    config.out.mkdir(parents=True, exist_ok=True)
    checkpoint = config.out / ".best.weights.h5"
    deadline = started + config.max_seconds if config.max_seconds else None
    progress = _ProgressCallback(config.epochs, on_epoch, should_stop, deadline)
    history = fitted.fit(
        **_training_input(data, sample_weight, config),
        validation_data=(x_val, y_val),
        epochs=config.epochs,
        callbacks=[
            keras.callbacks.ModelCheckpoint(
                checkpoint, monitor="val_loss", save_best_only=True, save_weights_only=True
            ),
            progress,
        ],
        verbose=2,
    )
    if progress.cancelled:
        checkpoint.unlink(missing_ok=True)
        raise TrainingCancelled("training was cancelled")
    fitted.load_weights(checkpoint)  # the student's layers are fitted's own
    checkpoint.unlink()
    train_seconds = time.perf_counter() - started

    val_scores = model.predict(x_val, batch_size=128, verbose=0).ravel()
    threshold = pick_threshold(y_val, val_scores, config.min_sensitivity)
    val_metrics = binary_metrics(y_val, val_scores, threshold)
    val_losses = history.history["val_loss"]
    report = {
        "split": "validation (patient-wise carve of train/)",
        "metrics": val_metrics,
        "threshold_rule": (
            f"highest threshold with validation sensitivity >= {config.min_sensitivity}"
        ),
        "data": counts,
        "training": {
            "epochs_run": len(val_losses),
            "best_epoch": int(np.argmin(val_losses)) + 1,
            "seconds": round(train_seconds, 1),
            "seconds_per_epoch": [round(s, 2) for s in progress.epoch_seconds],
        },
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(config).items()
            if k != "extra_samples"
        },
        "environment": environment(),
    }
    save_validated_model(
        model,
        config.out,
        ModelMetadata(config.version or config.out.name, threshold, config.preprocessing),
        report,
        (y_val, val_scores),
    )
    (config.out / "history.json").write_text(json.dumps(history.history, indent=1))
    plot_history(history.history, config.out / "training.png")
    log(
        f"validation: AUC {val_metrics['auc']:.4f}, threshold {threshold:.4f}, "
        f"sensitivity {val_metrics['sensitivity']:.3f}, "
        f"specificity {val_metrics['specificity']:.3f}"
    )
    return report


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The command line's TrainConfig (see `--help`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_dataset_and_output_arguments(parser)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    parser.add_argument(
        "--normalization", choices=NORMALIZATIONS, default=TrainConfig.normalization
    )
    parser.add_argument(
        "--crop-to-body",
        action="store_true",
        help="cut the black margins around the patient before resizing",
    )
    parser.add_argument(
        "--normalize-detail",
        action="store_true",
        help="bring every film's fine detail to one level (mlcore.preprocess.normalize_detail)",
    )
    parser.add_argument(
        "--detail-bands",
        type=int,
        default=TrainConfig.detail_bands,
        help="with --normalize-detail, level this many bands of detail, finest first "
        "(mlcore.preprocess.DETAIL_BANDS: sigma 1.5, 3 and 6 px)",
    )
    parser.add_argument("--width", type=int, default=TrainConfig.width)
    parser.add_argument("--dropout", type=float, default=TrainConfig.dropout)
    parser.add_argument("--augment-strength", type=float, default=TrainConfig.augment_strength)
    parser.add_argument(
        "--aspect-jitter",
        type=float,
        default=TrainConfig.aspect_jitter,
        help="extra width-only zoom range, so the film's aspect ratio carries no label",
    )
    parser.add_argument(
        "--max-zoom-in",
        type=float,
        default=TrainConfig.max_zoom_in,
        help="how far augmentation may magnify a film (0.25: up to 1.33x at strength 1)",
    )
    parser.add_argument(
        "--centre-brightness",
        type=float,
        default=TrainConfig.centre_brightness,
        help="lighten or darken the middle of the film by up to this much (0-1 scale; 0: off)",
    )
    parser.add_argument(
        "--detail-gain",
        type=float,
        default=TrainConfig.detail_gain,
        help="soften or sharpen each film's detail by a random gain up to this factor (0: off)",
    )
    parser.add_argument(
        "--framing-views",
        type=int,
        default=TrainConfig.framing_views,
        help="also frame each training film this many times tighter, at random "
        "(mlcore.framing.RandomFraming); each epoch shows each film in one of its N+1 "
        "framings, as stored in 1 of N+1 epochs on average (0: off)",
    )
    parser.add_argument(
        "--max-framing-zoom",
        type=float,
        default=TrainConfig.max_framing_zoom,
        help="how much tighter a framing view may be (1.3: up to 1.3x)",
    )
    parser.add_argument(
        "--balance-film-shape",
        action="store_true",
        help="weight the films whose shape is known (not 224x224 copies) so both classes "
        "share one distribution of aspect ratios",
    )
    parser.add_argument(
        "--estimate-film-shape",
        action="store_true",
        help="balance film shape, guessing it for stretched copies (mlcore/shape_estimator.py)",
    )
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument(
        "--split-seed",
        type=int,
        default=TrainConfig.split_seed,
        help="seed of the validation carve (keep it fixed to compare runs)",
    )
    parser.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction)
    parser.add_argument("--min-sensitivity", type=float, default=TrainConfig.min_sensitivity)
    parser.add_argument("--init-model", type=Path, help="fine-tune from this model directory")
    parser.add_argument(
        "--teacher",
        type=Path,
        help="learn to read as this model directory reads the same augmented views "
        "(mlcore.distill); it must use the same preprocessing options",
    )
    parser.add_argument(
        "--teacher-weight",
        type=float,
        default=TrainConfig.teacher_weight,
        help="with --teacher, the share of the loss that follows the teacher rather than "
        "the label (1: the teacher alone)",
    )
    parser.add_argument(
        "--limit-per-class", type=int, help="use at most N images per class (smoke runs)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="time budget from the start (data loading included): no epoch is begun that would "
        "end past it, judged by the longest epoch so far; the first always runs",
    )
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> None:
    train(parse_config(argv))


if __name__ == "__main__":
    main()
