"""Prediction monitoring (tlserve/service/monitor.py and the version metrics that use it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tests.exporters.test_reference import LABELS, clusters, made
from tlserve.exporters import reference as exporter_reference
from tlserve.service.backends.base import Outputs
from tlserve.service.metrics import Metrics
from tlserve.service.monitor import MINIMUM, WINDOW, ClassWindow, Reference, js_divergence


def test_js_divergence_bounds() -> None:
    p = np.array([0.2, 0.3, 0.5])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert 0 < js_divergence(np.array([0.5, 0.25, 0.25]), p) < js_divergence(np.array([1.0, 0, 0]), p)


def test_the_window_forgets_the_oldest() -> None:
    window = ClassWindow(3, size=4)
    window.add(np.array([0, 0, 0, 0]))
    window.add(np.array([1, 2]))
    assert window.distribution().tolist() == [0.5, 0.25, 0.25] and window.seen == 6
    window.add(np.array([2] * 10))  # a batch larger than the window keeps its newest
    assert window.distribution().tolist() == [0.0, 0.0, 1.0]


def test_the_servers_novelty_is_the_exporters() -> None:
    """The server scores with reference.json's rounded numbers what the exporter scored in float64:
    the validation quantiles it recorded come out again from the same images."""
    features, labels = clusters(1)
    held_out, _ = clusters(2, per_class=30)
    data = exporter_reference.statistics(features, labels, [200, 200, 200], held_out, None, LABELS)
    served = Reference.from_data(data).novelty(held_out.astype(np.float32))
    recorded = data["validation_novelty"]["values"]
    np.testing.assert_allclose(
        np.quantile(served, data["validation_novelty"]["quantiles"]), recorded, rtol=1e-5
    )
    assert Reference.from_data(made()).priors.tolist() == pytest.approx([250 / 600, 200 / 600, 150 / 600])


def test_leave_one_out_scales_hold_for_new_images_of_a_class() -> None:
    """Few images per class (10) and many dimensions: new images of the same classes are beyond the
    training edge (novelty > 1) about as often as the 95 % quantile says, not most of the time."""
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 1, (20, 256))
    train = np.repeat(np.arange(20), 10)
    test = np.repeat(np.arange(20), 50)
    features = centres[train] + rng.normal(0, 1, (len(train), 256))
    data = exporter_reference.statistics(features, train, [10] * 20, None, None, [str(i) for i in range(20)])
    fresh = centres[test] + rng.normal(0, 1, (len(test), 256))
    beyond = float((Reference.from_data(data).novelty(fresh) > 1.0).mean())
    assert beyond < 0.15, beyond  # 0.059 here; without the leave-one-out correction 0.79


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, {"model": "m", "version": "1", **labels})
    assert got is not None, (name, labels)
    return got


def test_version_metrics_count_classes_and_see_drift_and_novelty() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    served = metrics.version("m", 1, "onnxruntime", ["CPUExecutionProvider"], "model.onnx")
    served.watch(LABELS, Reference.from_data(made()))
    assert math.isnan(value(registry, "tlserve_class_drift"))
    features, _ = clusters(9, per_class=40)

    def answer(classes: np.ndarray, embedding: np.ndarray) -> Outputs:
        probabilities = np.full((len(classes), 3), 0.05, np.float32)
        probabilities[np.arange(len(classes)), classes] = 0.9
        return Outputs(probabilities, embedding.astype(np.float32))

    # the training mix (250/200/150), answered from in-distribution embeddings
    mix = np.repeat([0, 1, 2], [50, 40, 30])
    served.predicted(answer(mix, features[:120]))
    assert value(registry, "tlserve_predictions_total", **{"class": "a"}) == 50
    assert value(registry, "tlserve_prediction_confidence_count") == 120
    assert value(registry, "tlserve_prediction_confidence_bucket", le="0.9") == 120
    matched = value(registry, "tlserve_class_drift")
    assert matched < 0.01
    within = value(registry, "tlserve_prediction_novelty_bucket", le="1.0")
    assert within >= 0.85 * 120
    # then only class c, from another domain
    elsewhere = np.abs(np.random.default_rng(10).normal(0, 2, (WINDOW, 16)))
    served.predicted(answer(np.full(WINDOW, 2), elsewhere))
    assert value(registry, "tlserve_class_drift") > 0.3 > matched
    novel = WINDOW + 120 - value(registry, "tlserve_prediction_novelty_bucket", le="1.0")
    assert novel >= 0.9 * WINDOW

    served.remove()
    assert registry.get_sample_value("tlserve_class_drift", {"model": "m", "version": "1"}) is None
    assert (
        registry.get_sample_value("tlserve_predictions_total", {"model": "m", "version": "1", "class": "a"})
        is None
    )


def test_without_reference_only_classes_and_confidence() -> None:
    registry = CollectorRegistry()
    served = Metrics(registry).version("m", 1, "onnxruntime", ["CPUExecutionProvider"], "model.onnx")
    served.watch(LABELS, None)
    served.predicted(Outputs(np.array([[0.1, 0.7, 0.2]] * (MINIMUM + 1), np.float32)))
    assert value(registry, "tlserve_predictions_total", **{"class": "b"}) == MINIMUM + 1
    assert registry.get_sample_value("tlserve_class_drift", {"model": "m", "version": "1"}) is None
    assert (
        registry.get_sample_value("tlserve_prediction_novelty_count", {"model": "m", "version": "1"}) is None
    )


def test_unknown_goes_first_and_keeps_k_labels() -> None:
    from tlserve.service.domain import Prediction, Unknown

    probabilities = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.9, 0.05, 0.05]], np.float32)
    prediction = Prediction("m", 1, probabilities, LABELS, novelty=np.array([0.5, 0.8, 3.0]))
    assert [[s.label for s in row] for row in prediction.top(2)] == [["a", "b"], ["a", "b"], ["a", "b"]]
    low = prediction.top(2, Unknown(below=0.5))
    assert [[s.label for s in row] for row in low] == [["a", "b"], ["unknown", "a"], ["a", "b"]]
    assert low[1][0].index == -1 and low[1][0].score == pytest.approx(0.6)
    far = prediction.top(1, Unknown(novelty_above=1.0))
    assert [[s.label for s in row] for row in far] == [["a"], ["a"], ["unknown"]]
    both = prediction.top(None, Unknown(below=0.5, novelty_above=1.0))
    assert [row[0].label for row in both] == ["a", "unknown", "unknown"] and len(both[1]) == 4
    # without novelty (no reference statistics) the novelty test cannot apply
    plain = Prediction("m", 1, probabilities, LABELS)
    assert [row[0].label for row in plain.top(1, Unknown(novelty_above=1.0))] == ["a", "a", "a"]


def test_unknown_with_every_class_keeps_every_class() -> None:
    from tlserve.service.domain import Prediction, Unknown

    prediction = Prediction("m", 1, np.array([[0.4, 0.35, 0.25]], np.float32), LABELS)
    (row,) = prediction.top(None, Unknown(below=0.5))
    assert [s.label for s in row] == ["unknown", "a", "b", "c"]  # TF Serving's Classify: all classes


def test_drift_waits_for_enough_images_per_class() -> None:
    from tlserve.service.monitor import minimum, window

    assert (window(3), minimum(3)) == (1000, 100)
    assert (window(200), minimum(200)) == (10000, 2000)
    # the chance level of a sample of the priors themselves stays small at that window
    rng = np.random.default_rng(0)
    priors = np.full(200, 1 / 200)
    chance = [js_divergence(np.bincount(rng.choice(200, window(200)), minlength=200) / window(200), priors)
              for _ in range(5)]  # fmt: skip
    assert max(chance) < 0.02, chance
