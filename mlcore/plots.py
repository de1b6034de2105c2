"""PNG plots of an evaluation or a training run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mlcore.metrics import roc_curve  # noqa: E402


def plot_roc(labels, scores, auc: float, path: Path, title: str) -> None:
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="Sensitivity", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(matrix, path: Path, title: str) -> None:
    values = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    ax.imshow(values, cmap="Blues")
    names = ["normal", "pneumonia"]
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    for (row, col), value in np.ndenumerate(values):
        colour = "white" if value > values.max() / 2 else "black"
        ax.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=14)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    keys = [k for k in ("loss", "val_loss", "auc", "val_auc") if k in history]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), dpi=100)
    for key in keys:
        axis = axes[0] if key.endswith("loss") else axes[1]
        axis.plot(range(1, len(history[key]) + 1), history[key], label=key)
    axes[0].set(xlabel="epoch", title="loss")
    axes[1].set(xlabel="epoch", title="AUC")
    for axis in axes:
        axis.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_evaluation_plots(labels, scores, metrics: dict, out_dir: Path, prefix: str) -> None:
    plot_roc(
        labels,
        scores,
        metrics["auc"],
        out_dir / f"{prefix}roc.png",
        f"ROC ({prefix.rstrip('_') or 'eval'})",
    )
    plot_confusion(
        metrics["confusion_matrix"]["values"],
        out_dir / f"{prefix}confusion.png",
        f"threshold {metrics['threshold']:.3f}",
    )
