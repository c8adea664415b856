"""Is a trained model any good? A verdict from the validation confusion matrix (numpy only).

A run is **weak** when either holds:

* its validation accuracy is not clearly above chance. Chance is the share of the largest class in
  the validation set (what always predicting the majority class scores), and "clearly above" means
  ``accuracy > chance + margin`` with ``margin = max(0.05, 2 * sqrt(chance * (1 - chance) / n))``:
  two binomial standard errors of an accuracy measured on ``n`` images, and never less than five
  points. A validation set with no images, or with images of one class only, says nothing about the
  model, so it is weak too;
* its predictions are constant: every validation image gets the same class while the validation
  set holds more than one.

The trainer stores the verdict as ``run.json["quality"]``; ``tlserve export`` refuses a weak run
unless it is given ``--allow-weak``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["MIN_MARGIN", "assess", "summary_line"]

MIN_MARGIN = 0.05
"""The least margin over chance that counts as "clearly above", however large the validation set."""


def assess(confusion: list[list[int]], class_names: list[str] | None = None) -> dict[str, Any]:
    """The verdict on a validation confusion matrix (rows: true class, columns: predicted class).

    Returns a JSON-able dict: ``weak``, ``reasons`` (short sentences, empty when not weak),
    ``accuracy``, ``chance_accuracy``, ``margin``, ``constant_predictions``, ``predicted_classes``
    (how many classes are predicted at least once) and ``val_images``.
    """
    matrix = _matrix(confusion)
    k = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if k and len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
    n = int(matrix.sum())
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    true_classes = int((support > 0).sum())
    predicted_classes = int((predicted > 0).sum())
    accuracy = float(np.trace(matrix) / n) if n else 0.0
    chance = float(support.max() / n) if n else 0.0
    margin = max(MIN_MARGIN, 2 * math.sqrt(chance * (1 - chance) / n)) if n else MIN_MARGIN
    constant = predicted_classes == 1 and true_classes > 1
    reasons: list[str] = []
    if n == 0:
        reasons.append("there are no validation images, so the accuracy cannot be checked")
    elif true_classes == 1:
        only = names[int(np.argmax(support))]
        reasons.append(f"every validation image is of class {only!r}, so the accuracy says nothing")
    elif accuracy <= chance + margin:
        reasons.append(
            f"val accuracy {accuracy:.3f} is not clearly above chance {chance:.3f} "
            f"(needs > {chance + margin:.3f} with {n} images)"
        )
    if constant:
        reasons.append(f"every validation image is predicted as {names[int(np.argmax(predicted))]!r}")
    return {
        "weak": bool(reasons),
        "reasons": reasons,
        "accuracy": accuracy,
        "chance_accuracy": chance,
        "margin": margin,
        "constant_predictions": constant,
        "predicted_classes": predicted_classes,
        "val_images": n,
    }


def summary_line(quality: dict[str, Any]) -> str:
    """One line for the trainer to print about a weak run (empty when it is not weak)."""
    if not quality.get("weak"):
        return ""
    if quality.get("chance_accuracy", 0) + quality.get("margin", 0) >= 1:
        advice = "the validation set is too small to tell: give more images with --val-data or --val-split"
    else:
        advice = "check the data and labels, try --mode scratch or another --base"
    return (
        f"warning: weak model: {'; '.join(quality['reasons'])}; {advice}; "
        "tlserve export refuses it without --allow-weak"
    )


def _matrix(confusion: list[list[int]]) -> np.ndarray:
    if isinstance(confusion, list) and not confusion:
        return np.zeros((0, 0), dtype=np.int64)
    try:
        matrix = np.asarray(confusion)
    except ValueError:
        matrix = np.zeros(0)  # ragged rows
    if (
        matrix.ndim != 2
        or matrix.shape[0] != matrix.shape[1]
        or not np.issubdtype(matrix.dtype, np.integer)
        or (matrix < 0).any()
    ):
        raise ValueError("the confusion matrix must be a square table of counts (lists of integers >= 0)")
    return matrix.astype(np.int64)
