"""Confidence calibration at export: temperature scaling fitted on the run's validation images.

A network fine-tuned on a few hundred images is usually over-confident: its top score says 0.99 where
it is right 80 % of the time. Temperature scaling (Guo et al., 2017) divides the logits by one number
T fitted to minimise the negative log-likelihood of the validation labels; the top-1 class never
changes, only how sure the scores say the model is. The exporter bakes ``softmax(logits / T)`` into
the served graph (``served_model``), so the SavedModel, every ONNX artifact and their parity checks all
give the calibrated scores, and ``manifest.json`` records T and the expected calibration error (ECE,
15 equal-width bins of the top-1 score) before and after.

Two guards keep a small validation set from making the scores worse:
- with every validation image right, the likelihood always prefers a sharper softmax (T -> 0), which
  is no evidence of under-confidence: T is then kept >= 1;
- ``ece_after`` is measured on the images T was fitted on, so it flatters; ``ece_after_heldout``
  (each half of the images scored with the T fitted on the other half) is the honest figure, given
  from 20 images up.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tlserve import repository as repo

__all__ = [
    "BINS",
    "calibrate",
    "describe",
    "expected_calibration_error",
    "fit_temperature",
    "logits_model",
    "served_model",
    "softmax",
]

BINS = 15
LOWEST, HIGHEST = 0.05, 20.0
"""The range T is searched in."""
HELDOUT_MINIMUM = 20
HEAD_LAYER = "probabilities"
"""The trainer's softmax Dense layer (tlserve.training.network.build_classifier)."""


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Sum over equal-width bins of the top-1 score: share of images x |accuracy - mean score|."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(_log_softmax(logits.astype(np.float64) / temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_p = _log_softmax(logits.astype(np.float64) / temperature)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lowest: float = LOWEST) -> float:
    """The T in [lowest, HIGHEST] of least NLL. NOTE: the NLL is convex in 1/T, so a golden-section
    search on 1/T finds the optimum; 60 steps narrow the bracket below 1e-10."""
    a, b = 1.0 / HIGHEST, 1.0 / lowest
    ratio = (5**0.5 - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, 1 / c), nll(logits, labels, 1 / d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, 1 / c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, 1 / d)
    return float(2 / (a + b))


def _fit(logits: np.ndarray, labels: np.ndarray) -> float:
    all_right = bool((logits.argmax(axis=1) == labels).all())
    return fit_temperature(logits, labels, lowest=1.0 if all_right else LOWEST)


def _heldout_ece(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """ECE of each half scored with the temperature fitted on the other half (seeded split)."""
    if len(labels) < HELDOUT_MINIMUM:
        return None
    order = np.random.default_rng(3).permutation(len(labels))
    halves = order[: len(order) // 2], order[len(order) // 2 :]
    scored = np.empty((len(labels), logits.shape[1]))
    for fit_on, score in (halves, halves[::-1]):
        scored[score] = softmax(logits[score], _fit(logits[fit_on], labels[fit_on]))
    return expected_calibration_error(scored, labels)


def logits_model(model: keras.Model) -> keras.Model | None:
    """``model`` up to its softmax Dense layer's pre-activation (a copy of that layer without the
    softmax, same weights); None when the model does not end in one."""
    try:
        dense = model.get_layer(HEAD_LAYER)
    except ValueError:
        return None
    if not isinstance(dense, keras.layers.Dense) or dense.get_config().get("activation") != "softmax":
        return None
    linear = keras.layers.Dense(dense.units, use_bias=dense.use_bias, name="logits", dtype="float32")
    logits = linear(dense.input)
    linear.set_weights(dense.get_weights())
    return keras.Model(model.inputs, logits, name="logits")


def served_model(model: keras.Model, temperature: float) -> keras.Model:
    """``model`` with ``softmax(logits / temperature)`` as its output (``model`` itself at T = 1)."""
    logits = logits_model(model)
    if temperature == 1.0 or logits is None:
        return model
    scaled = keras.layers.Rescaling(1.0 / temperature, name="temperature")(logits.output)
    probabilities = keras.layers.Softmax(name=repo.OUTPUT_NAME, dtype="float32")(scaled)
    return keras.Model(model.inputs, probabilities, name=f"{model.name}_calibrated")


def calibrate(
    model: keras.Model, pixels: np.ndarray | None, labels: np.ndarray | None, requested: bool, batch: int
) -> tuple[keras.Model, dict[str, Any]]:
    """The model to serve and the manifest's ``calibration`` record.

    ``pixels``/``labels``: the run's validation images (None when the data has moved). When not
    ``requested`` (``--no-calibrate``) the raw softmax is served and its ECE is still measured."""
    record: dict[str, Any] = {"requested": requested, "method": "none", "temperature": 1.0, "bins": BINS}
    logits_of = logits_model(model)
    if logits_of is None:
        record["note"] = f"the model does not end in a softmax Dense layer named {HEAD_LAYER!r}"
        return model, record
    if pixels is None or labels is None or len(labels) == 0:
        record["note"] = "no validation images (the run's data has moved): nothing to fit on"
        return model, record
    logits = logits_of.predict(pixels, verbose=0, batch_size=batch).astype(np.float64)
    record.update(images=len(labels), ece_before=expected_calibration_error(softmax(logits), labels))
    record["nll_before"] = nll(logits, labels, 1.0)
    if not requested:
        record["note"] = "--no-calibrate: the raw softmax is served"
        return model, record
    temperature = _fit(logits, labels)
    record.update(
        method="temperature",
        temperature=temperature,
        ece_after=expected_calibration_error(softmax(logits, temperature), labels),
        nll_after=nll(logits, labels, temperature),
        ece_after_heldout=_heldout_ece(logits, labels),
    )
    if (logits.argmax(axis=1) == labels).all():
        record["note"] = "every validation image is right: T kept >= 1 (no evidence of under-confidence)"
    elif not LOWEST * 1.01 < temperature < HIGHEST * 0.99:
        record["note"] = f"T is at the end of the range searched ({LOWEST:g}..{HIGHEST:g})"
    return served_model(model, temperature), record


def describe(record: dict[str, Any]) -> str:
    """One line for the export's progress output."""
    if "ece_before" not in record:
        return f"not calibrated: {record.get('note', '')}"
    if record["method"] != "temperature":
        return f"raw softmax, ECE {record['ece_before']:.3f} (not calibrated: {record.get('note', '')})"
    heldout = record.get("ece_after_heldout")
    held = f", {heldout:.3f} held out" if heldout is not None else ""
    note = f" ({record['note']})" if record.get("note") else ""
    return (
        f"calibrated, T = {record['temperature']:.2f}: ECE {record['ece_before']:.3f} -> "
        f"{record['ece_after']:.3f}{held} on {record['images']} validation images{note}"
    )
