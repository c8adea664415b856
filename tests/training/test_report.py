from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tlserve.training.report import KeptPoint, kept_epoch, kept_points, plot_history, plot_mistakes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def epochs(val_losses: list[float], learning_rates: list[float] | None = None) -> list[dict[str, float]]:
    history = [
        {"loss": v + 0.1, "accuracy": 1 - v / 2, "val_loss": v, "val_accuracy": 1 - v} for v in val_losses
    ]
    for entry, rate in zip(history, learning_rates or [], strict=False):
        entry["learning_rate"] = rate
    return history


def two_phases() -> list[dict[str, Any]]:
    return [
        {"name": "head", "history": epochs([0.9, 0.5, 0.6]), "kept_epoch": 2, "best_epoch": 2},
        {
            "name": "fine_tune",
            "history": epochs([0.45, 0.3, 0.35, 0.4], [1e-4, 1e-4, 1e-5, 1e-5]),
            "kept_epoch": 2,
        },
    ]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_kept_points_offset_later_phases_by_the_earlier_epochs() -> None:
    phases = two_phases()
    assert kept_points(phases) == [KeptPoint("head", 2, 2, 0.5), KeptPoint("fine_tune", 2, 5, 0.3)]
    assert [p.value for p in kept_points(phases, "val_accuracy")] == [0.5, 0.7]
    # only the second phase logged a learning rate
    assert kept_points(phases, "learning_rate") == [KeptPoint("fine_tune", 2, 5, 1e-4)]


def test_kept_epoch_falls_back_to_best_epoch_then_to_nothing() -> None:
    history = epochs([0.9, 0.5, 0.6])
    assert kept_epoch({"name": "a", "history": history, "kept_epoch": 3, "best_epoch": 2}) == 3
    assert kept_epoch({"name": "a", "history": history, "best_epoch": 2}) == 2
    assert kept_epoch({"name": "a", "history": history}) is None
    assert kept_epoch({"name": "a", "history": [], "best_epoch": 0}) is None
    assert kept_epoch({"name": "a", "history": history, "kept_epoch": 0, "best_epoch": 2}) == 0
    assert kept_epoch({"name": "a", "history": history, "kept_epoch": 4}) is None
    phases = [{"name": "old", "history": history}, {"name": "new", "history": history, "best_epoch": 1}]
    assert kept_points(phases) == [KeptPoint("new", 1, 4, 0.9)]


def test_start_weights_kept_sit_on_the_boundary_before_the_phase() -> None:
    phases = two_phases()
    phases[1]["kept_epoch"] = 0
    phases[1]["start"] = {"val_loss": 0.5, "val_accuracy": 0.5}
    assert kept_points(phases)[1] == KeptPoint("fine_tune", 0, 3.5, 0.5)
    assert [p.phase for p in kept_points(phases, "learning_rate")] == []
    phases[1].pop("start")
    assert [p.phase for p in kept_points(phases)] == ["head"]


@pytest.mark.parametrize(
    "phases",
    [
        two_phases(),
        two_phases()[:1],
        [{"name": "old", "history": epochs([0.7, 0.6])}],
        [{"name": "head", "history": epochs([0.7, 0.6], [1e-3, 1e-3]), "kept_epoch": 2}],
        [{"name": "none", "history": [], "best_epoch": 0}],
        [
            *two_phases()[:1],
            {"name": "fine_tune", "history": epochs([0.6]), "kept_epoch": 0, "start": {"val_loss": 0.5}},
        ],
    ],
    ids=["two-phases", "kept-no-rate", "old-run-json", "one-phase-with-rate", "no-epochs", "start-kept"],
)
def test_plot_history_writes_a_png(tmp_path: Path, phases: list[dict[str, Any]]) -> None:
    path = tmp_path / "history.png"
    plot_history(phases, path, "mobilenet_v2 · transfer")
    assert_png(path)


def predictions(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def images(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_mistakes_are_the_misclassified_images_worst_first(tmp_path: Path) -> None:
    names = ["cat", "dog", "fox"]
    labels = np.array([0, 1, 2, 0, 1])
    probabilities = predictions(
        [
            [0.6, 0.3, 0.1],  # right
            [0.5, 0.4, 0.1],  # wrong, p_true 0.4
            [0.05, 0.9, 0.05],  # wrong, p_true 0.05: the worst
            [0.2, 0.1, 0.7],  # wrong, p_true 0.2
            [0.01, 0.98, 0.01],  # right, confident
        ]
    )
    files = [f"{n}/img_{i}.png" for i, n in enumerate(["cat", "dog", "fox", "cat", "dog"])]
    path = tmp_path / "mistakes.png"
    rows = plot_mistakes(images(5), labels, probabilities, names, files, path, "run")
    assert [r["file"] for r in rows] == ["fox/img_2.png", "cat/img_3.png", "dog/img_1.png"]
    assert rows[0] == {
        "file": "fox/img_2.png",
        "true": "fox",
        "predicted": "dog",
        "true_score": 0.05,
        "predicted_score": 0.9,
        "loss": round(-np.log(0.05), 4),
    }
    assert [(r["true"], r["predicted"]) for r in rows[1:]] == [("cat", "fox"), ("dog", "cat")]
    assert [r["loss"] for r in rows] == [2.9957, 1.6094, 0.9163]
    assert_png(path)

    capped = plot_mistakes(images(5), labels, probabilities, names, files, path, "run", limit=2)
    assert capped == rows[:2]


def test_a_zero_true_probability_is_clipped_like_keras_so_the_loss_stays_finite(tmp_path: Path) -> None:
    labels = np.array([1, 0])
    probabilities = predictions([[1.0, 0.0], [0.45, 0.55]])
    rows = plot_mistakes(images(2), labels, probabilities, ["a", "b"], ["x", "y"], tmp_path / "m.png", "t")
    assert [r["file"] for r in rows] == ["x", "y"]
    assert rows[0]["loss"] == round(-np.log(1e-7), 4)
    assert rows[0]["true_score"] == 0.0 and rows[0]["predicted_score"] == 1.0


def test_nothing_misclassified_still_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "mistakes.png"
    probabilities = predictions([[0.9, 0.1], [0.2, 0.8]])
    rows = plot_mistakes(images(2), np.array([0, 1]), probabilities, ["a", "b"], ["x", "y"], path, "t")
    assert rows == []
    assert_png(path)


def test_one_image(tmp_path: Path) -> None:
    path = tmp_path / "mistakes.png"
    rows = plot_mistakes(images(1), np.array([1]), predictions([[0.7, 0.3]]), ["a", "b"], ["x"], path, "t")
    assert rows == [
        {"file": "x", "true": "b", "predicted": "a", "true_score": 0.3, "predicted_score": 0.7, "loss": 1.204}
    ]
    assert_png(path)


def test_fifty_classes_long_names_and_float_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n, classes = 40, 50
    logits = rng.normal(size=(n, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, classes, n)
    names = [f"a rather long class name number {i}" for i in range(classes)]
    files = [f"some/deeply/nested/folder/{i:04d}_with_a_long_file_name.jpg" for i in range(n)]
    path = tmp_path / "mistakes.png"
    pixels = images(n, size=8).astype(np.float32)  # the pipelines hand over float32 in [0, 255]
    rows = plot_mistakes(pixels, labels, probabilities, names, files, path, "t")
    wrong = probabilities.argmax(axis=1) != labels
    assert len(rows) == min(16, int(wrong.sum()))
    assert [r["loss"] for r in rows] == sorted((r["loss"] for r in rows), reverse=True)
    worst = int(np.argmax(np.where(wrong, -np.log(probabilities[np.arange(n), labels]), -np.inf)))
    assert rows[0]["file"] == files[worst]
    assert_png(path)


def test_inputs_that_do_not_match_say_what_was_received(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    with pytest.raises(ValueError, match=r"received shape \(1, 3\)"):
        plot_mistakes(images(1), np.array([0]), predictions([[0.2, 0.3, 0.5]]), ["a", "b"], ["x"], path, "t")
    with pytest.raises(ValueError, match="received 1, 1, 1 and 2"):
        plot_mistakes(images(1), np.array([0]), predictions([[0.2, 0.8]]), ["a", "b"], ["x", "y"], path, "t")
    with pytest.raises(ValueError, match=r"received 2\.\.2"):
        plot_mistakes(images(1), np.array([2]), predictions([[0.2, 0.8]]), ["a", "b"], ["x"], path, "t")
    with pytest.raises(ValueError, match="limit=0"):
        plot_mistakes(images(1), np.array([0]), predictions([[0.2, 0.8]]), ["a", "b"], ["x"], path, "t", 0)
