"""run.json and the plots of a run: history.png, confusion.png and the worst mistakes."""

from __future__ import annotations

import json
import math
import platform
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, Protocol

import numpy as np

# NOTE: Keras clips probabilities to this before taking the log, so our per-image loss matches its val_loss.
_EPSILON = 1e-7


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    import tlserve

    return {
        "python": platform.python_version(),
        "tlserve": tlserve.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class KeptPoint(NamedTuple):
    """Where a phase's kept weights sit on the history plot."""

    phase: str
    epoch: int  # 1-based within the phase; 0: the weights the phase started from
    x: float  # on the plot's x axis, epochs of all phases one after another
    value: float


def kept_epoch(phase: dict[str, Any]) -> int | None:
    """The 1-based epoch whose weights the phase kept, 0 when it kept the weights it started from
    (no epoch beat them); None when unknown. Older run.json files only have "best_epoch"."""
    if "kept_epoch" in phase:
        epoch = int(phase["kept_epoch"])
        return epoch if 0 <= epoch <= len(phase["history"]) else None
    best = phase.get("best_epoch")
    return int(best) if best is not None and 1 <= int(best) <= len(phase["history"]) else None


def kept_points(phases: list[dict[str, Any]], key: str = "val_loss") -> list[KeptPoint]:
    """One point per phase that knows its kept epoch and logged ``key`` there. Weights kept from
    the start of a phase sit on the boundary before its first epoch, valued by its "start" entry."""
    points = []
    offset = 0
    for phase in phases:
        epoch = kept_epoch(phase)
        if epoch is not None:
            logged = phase["history"][epoch - 1] if epoch else phase.get("start") or {}
            if key in logged:
                x = offset + epoch if epoch else offset + 0.5
                points.append(KeptPoint(phase["name"], epoch, x, float(logged[key])))
        offset += len(phase["history"])
    return points


def plot_history(phases: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train and validation, phases one after another, the kept epoch
    of each phase starred; a third panel shows the learning rate when the history logged it."""
    plt = _pyplot()
    keys = ["loss", "accuracy"]
    if any("learning_rate" in e for phase in phases for e in phase["history"]):
        keys.append("learning_rate")
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), width_ratios=[1, 1, 0.7])
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    offset = 0
    for phase in phases:
        history = phase["history"]
        epochs = np.arange(offset + 1, offset + len(history) + 1)
        for ax, key in zip(axes, keys, strict=True):
            prefixes = [("", "-")] if key == "learning_rate" else [("", "-"), ("val_", "--")]
            for prefix, style in prefixes:
                values = [e.get(prefix + key) for e in history]
                if values and None not in values:
                    label = f"{phase['name']} {prefix}{key}"
                    # NOTE: a rate holds for a whole epoch: steps that change between epochs.
                    steps = "steps-mid" if key == "learning_rate" else "default"
                    ax.plot(epochs, values, style, marker="o", ms=3, drawstyle=steps, label=label)
        if offset:
            for ax in axes:
                ax.axvline(offset + 0.5, color="grey", lw=0.8)
        offset += len(history)
    for ax, key in zip(axes, keys, strict=True):
        marked = key if key == "learning_rate" else f"val_{key}"
        for point in kept_points(phases, marked):
            kept = f"kept epoch {point.epoch}" if point.epoch else "kept its start weights"
            label = f"{point.phase}: {kept} ({marked} {point.value:.4g})"
            ax.axvline(point.x, color="black", ls=":", lw=1, alpha=0.7)
            ax.plot(
                point.x,
                point.value,
                "*",
                ms=15,
                color="gold",
                markeredgecolor="black",
                zorder=5,
                label=None if key == "learning_rate" else label,
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[1].set_ylim(0, 1.02)
    if len(axes) == 3:
        axes[2].set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    matrix = np.asarray(confusion)
    n = len(class_names)
    size = min(4 + 0.5 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                color = "white" if matrix[i, j] > threshold else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _shorten(text: str, width: int) -> str:
    """Keep the end: of a path, the file name tells most; of a class name, the end is often the species."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _check_mistake_inputs(
    images: Images,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    files: list[str],
) -> None:
    n = len(labels)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities must be [N, {len(class_names)}] for {len(class_names)} class names; "
            f"received shape {probabilities.shape}"
        )
    if not len(images) == n == len(probabilities) == len(files):
        raise ValueError(
            "images, labels, probabilities and files must have one entry per image; received "
            f"{len(images)}, {n}, {len(probabilities)} and {len(files)}"
        )
    if n and not (labels.min() >= 0 and labels.max() < len(class_names)):
        raise ValueError(
            f"labels must lie in [0, {len(class_names) - 1}]; received {labels.min()}..{labels.max()}"
        )


class Images(Protocol):
    """Images by index, [H, W, 3] each: an array, or a reader that decodes only those shown."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def plot_mistakes(
    images: Images,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    files: list[str],
    path: Path,
    title: str,
    limit: int = 16,
) -> list[dict[str, Any]]:
    """The misclassified validation images with the highest loss (-log p_true), worst first, drawn
    in a grid (fastai's "top losses"); returns their rows for run.json. ``images`` are [N, H, W, 3]
    as the model saw them (only those shown are read), ``labels`` the true class indices,
    ``files`` the captions.
    The PNG is written even when nothing is misclassified."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1; received limit={limit}")
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check_mistake_inputs(images, labels, probabilities, class_names, files)
    n = len(labels)
    rows_index = np.arange(n)
    predicted = probabilities.argmax(axis=1)
    true_score = probabilities[rows_index, labels]
    losses = -np.log(np.clip(true_score, _EPSILON, 1.0))
    worst_first = np.argsort(-losses, kind="stable")
    wrong = worst_first[predicted[worst_first] != labels[worst_first]]
    shown = wrong[:limit]
    rows = [
        {
            "file": files[i],
            "true": class_names[labels[i]],
            "predicted": class_names[predicted[i]],
            "true_score": round(float(true_score[i]), 4),
            "predicted_score": round(float(probabilities[i, predicted[i]]), 4),
            "loss": round(float(losses[i]), 4),
        }
        for i in shown
    ]
    plt = _pyplot()
    noun = "image" if n == 1 else "images"
    if not rows:
        fig = plt.figure(figsize=(7, 2))
        fig.text(0.5, 0.6, title, ha="center", va="center", fontsize=12)
        message = f"no misclassified image among the {n} validation {noun}"
        fig.text(0.5, 0.35, message, ha="center", va="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return rows
    which = "all shown, worst first" if len(shown) == len(wrong) else f"the {len(shown)} worst shown"
    heading = f"{title} · {len(wrong)} of {n} validation {noun} misclassified ({which})"
    columns = min(len(shown), max(4, math.ceil(math.sqrt(len(shown)))))
    grid_rows = math.ceil(len(shown) / columns)
    width = 2.6 * columns + 0.4
    # NOTE: constrained layout, unlike tight_layout, leaves room for a suptitle wrapped over lines.
    fig, axes = plt.subplots(
        grid_rows, columns, figsize=(width, 3.0 * grid_rows + 0.8), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, row in zip(axes.flat, shown, rows, strict=False):
        # NOTE: nearest interpolation keeps a 32x32 image's pixels sharp when matplotlib upscales it.
        ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8), interpolation="nearest")
        ax.set_title(
            f"{_shorten(row['file'], 30)}\n"
            f"true: {_shorten(row['true'], 20)} {row['true_score']:.2f}\n"
            f"pred: {_shorten(row['predicted'], 20)} {row['predicted_score']:.2f}",
            fontsize=8,
        )
    fig.suptitle(textwrap.fill(heading, width=max(30, int(width * 12))), fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rows
