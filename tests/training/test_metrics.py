from __future__ import annotations

import numpy as np
import pytest

from tlserve.training.metrics import classification_metrics, format_metrics


def test_metrics_on_a_worked_example() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 0])
    probabilities = np.full((6, 3), 0.1)
    probabilities[np.arange(6), predicted] = 0.8
    m = classification_metrics(labels, probabilities, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    expected_loss = -(4 * np.log(0.8) + 2 * np.log(0.1)) / 6
    assert m["loss"] == pytest.approx(expected_loss)
    assert "macro" in format_metrics(m)
