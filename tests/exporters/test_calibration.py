"""Temperature scaling at export (tlserve/exporters/calibration.py), on small Keras models built here."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tlserve import repository as repo
from tlserve.exporters import calibration


def overconfident_model(scale: float) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """A linear softmax classifier on 3 noisy classes, its logits multiplied by ``scale``: right
    about 80 % of the time, but sure of itself well beyond that when ``scale`` is large."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 8))
    labels = rng.integers(0, 3, 600)
    x = (centres[labels] + rng.normal(0, 1.4, (600, 8))).astype(np.float32)
    inputs = keras.Input((8,), name="image")
    pooled = keras.layers.Identity(name="pool")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(pooled)
    model = keras.Model(inputs, outputs)
    # the least-squares direction to each centre, made sharp
    kernel = centres.T * scale
    bias = -0.5 * (centres**2).sum(axis=1) * scale
    model.get_layer("probabilities").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model, x, labels


def test_ece_of_hand_made_scores() -> None:
    # two images in the 0.9 bin, one right: |0.5 - 0.9|; two in the 0.6 bin, both right: |1 - 0.6|
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert calibration.expected_calibration_error(p, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert calibration.expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_fit_recovers_the_temperature_the_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (4000, 5))
    drawn = calibration.softmax(logits, 2.5)
    labels = np.array([rng.choice(5, p=row / row.sum()) for row in drawn])
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(2.5, rel=0.1)
    assert calibration.nll(logits, labels, fitted) < min(
        calibration.nll(logits, labels, 1.0), calibration.nll(logits, labels, 5.0)
    )


def test_calibration_lowers_the_ece_of_an_overconfident_model() -> None:
    model, x, labels = overconfident_model(scale=6.0)
    served, record = calibration.calibrate(model, x, labels, requested=True, batch=64)
    assert record["method"] == "temperature" and record["images"] == 600
    assert record["temperature"] > 2  # over-confident: the scores are softened
    assert record["ece_before"] > 0.08
    assert record["ece_after"] < record["ece_before"] / 2
    assert record["ece_after_heldout"] < record["ece_before"] / 2
    assert record["nll_after"] < record["nll_before"]
    raw = model.predict(x, verbose=0)
    got = served.predict(x, verbose=0)
    assert (got.argmax(1) == raw.argmax(1)).all()
    logits = calibration.logits_model(model).predict(x, verbose=0)
    np.testing.assert_allclose(got, calibration.softmax(logits, record["temperature"]), atol=1e-5)
    assert served.output.name.startswith(repo.OUTPUT_NAME) or served.layers[-1].name == repo.OUTPUT_NAME


def test_an_underconfident_model_is_sharpened() -> None:
    model, x, labels = overconfident_model(scale=0.3)
    _, record = calibration.calibrate(model, x, labels, requested=True, batch=64)
    assert record["temperature"] < 1 and record["ece_after"] < record["ece_before"]


def test_all_right_validation_never_sharpens() -> None:
    model, x, labels = overconfident_model(scale=0.3)
    right = model.predict(x, verbose=0).argmax(1) == labels
    _, record = calibration.calibrate(model, x[right], labels[right], requested=True, batch=64)
    assert record["temperature"] >= 1.0 and "every validation image is right" in record["note"]


def test_no_calibrate_serves_the_raw_softmax_and_still_measures_it() -> None:
    model, x, labels = overconfident_model(scale=6.0)
    served, record = calibration.calibrate(model, x, labels, requested=False, batch=64)
    assert served is model
    assert record["method"] == "none" and record["temperature"] == 1.0 and record["ece_before"] > 0.08
    assert "ece_after" not in record and "--no-calibrate" in record["note"]


def test_without_images_or_a_softmax_head_nothing_is_fitted() -> None:
    model, x, labels = overconfident_model(scale=6.0)
    served, record = calibration.calibrate(model, None, None, requested=True, batch=64)
    assert served is model and record["method"] == "none" and "no validation images" in record["note"]
    inputs = keras.Input((8,))
    plain = keras.Model(inputs, keras.layers.Dense(3, name="probabilities")(inputs))
    served, record = calibration.calibrate(plain, x, labels, requested=True, batch=64)
    assert served is plain and "softmax Dense" in record["note"]


def manifest(record: dict[str, object]) -> repo.Manifest:
    artifact = repo.Artifact(kind="onnx", files={"model.onnx": "0" * 64}, bytes=1)
    return repo.Manifest(
        name="m", version=1, created="2026-12-04", labels=["a", "b"],
        input=repo.InputSpec(name="image", shape=[-1, 8, 8, 3], dtype="float32"),
        outputs=[repo.TensorSpec(name="probabilities", shape=[-1, 2], dtype="float32")],
        base={}, validation={}, signatures={}, artifacts=[artifact], calibration=record,
    )  # fmt: skip


def test_the_manifest_keeps_and_checks_the_calibration() -> None:
    record = {"requested": True, "method": "temperature", "temperature": 1.7, "ece_before": 0.2}
    record["ece_after"] = 0.05
    again = repo.Manifest.from_dict(manifest(record).to_dict())
    assert again.calibration == record
    old = manifest({}).to_dict()
    del old["calibration"]  # a version exported before calibration existed
    assert repo.Manifest.from_dict(old).calibration == {}
    for bad in ({**record, "temperature": 0}, {**record, "temperature": "2"}, {**record, "ece_after": 1.5}):
        with pytest.raises(repo.ManifestError, match="calibration"):
            repo.Manifest.from_dict(manifest(bad).to_dict())
