"""Classification metrics from labels and predicted probabilities (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, per-class precision/recall/F1/support, macro averages and the
    confusion matrix (rows: true class, columns: predicted class)."""
    n = len(class_names)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.argmax(probabilities, axis=1)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_pos = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(true_pos, predicted_count, out=np.zeros(n), where=predicted_count > 0)
    recall = np.divide(true_pos, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0)))) if len(labels) else float("nan")
    present = support > 0
    return {
        "images": len(labels),
        "accuracy": float(np.mean(predicted == labels)) if len(labels) else float("nan"),
        "loss": loss,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """A per-class table and the headline figures, for the terminal."""
    names = list(metrics["per_class"])
    width = max(8, *(len(n) for n in names))
    lines = [f"{'class'.ljust(width)}  precision  recall     f1  support"]
    for name, m in metrics["per_class"].items():
        lines.append(
            f"{name.ljust(width)}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}"
            f"  {m['support']:7d}"
        )
    lines.append(
        f"{'macro'.ljust(width)}  {metrics['macro_precision']:9.3f}  {metrics['macro_recall']:6.3f}"
        f"  {metrics['macro_f1']:5.3f}  {metrics['images']:7d}"
    )
    lines.append(f"accuracy {metrics['accuracy']:.4f}   loss {metrics['loss']:.4f}")
    return "\n".join(lines)
