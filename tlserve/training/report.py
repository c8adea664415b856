"""run.json and the two plots of a run: history.png and confusion.png."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np


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


def plot_history(phases: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train and validation, phases one after another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for phase in phases:
        history = phase["history"]
        epochs = np.arange(offset + 1, offset + len(history) + 1)
        for ax, key in zip(axes, ("loss", "accuracy"), strict=False):
            for prefix, style in (("", "-"), ("val_", "--")):
                values = [e.get(prefix + key) for e in history]
                if values and None not in values:
                    ax.plot(epochs, values, style, marker="o", ms=3, label=f"{phase['name']} {prefix}{key}")
        if offset:
            for ax in axes:
                ax.axvline(offset + 0.5, color="grey", lw=0.8)
        offset += len(history)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=False):
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_ylim(0, 1.02)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
