"""Weak runs (no better than chance, or constant predictions) are refused unless --allow-weak."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.exporters.test_export_cli import listing
from tests.test_cli import assert_usage_error, run_cli
from tlserve.errors import UsageError
from tlserve.exporters.export import ExportOptions, export, run_quality
from tlserve.training.quality import assess
from tlserve.training.rundir import read_run

LABELS = ["blue", "green", "red"]
CHANCE = [[3, 3, 3], [3, 3, 3], [3, 3, 3]]
CONSTANT = [[0, 0, 3], [0, 0, 3], [0, 0, 3]]


def fake_run(root: Path, run: dict[str, Any]) -> Path:
    """A run dir complete enough for the checks made before any work: its model.keras is empty, so
    a refusal that names the weakness shows that it came before the model was loaded."""
    root.mkdir(parents=True)
    (root / "model.keras").write_bytes(b"")
    (root / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    (root / "run.json").write_text(json.dumps(run))
    return root


def test_weak_runs_are_refused_in_one_line_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    (repository / "colors" / "1").mkdir(parents=True)
    before = listing(repository)
    flagged = fake_run(tmp_path / "flagged", {"metrics": {}, "quality": assess(CONSTANT, LABELS)})
    old = fake_run(tmp_path / "old", {"metrics": {"confusion_matrix": CHANCE}})  # trained before quality
    empty = fake_run(tmp_path / "empty", {"metrics": {"confusion_matrix": [[0] * 3] * 3}})
    common = ["--repository", str(repository), "--name", "colors"]
    cases = [
        (flagged, ["weak model, not exported", "every validation image is predicted as 'red'"]),
        (old, ["val accuracy 0.333 is not clearly above chance 0.333 (needs > 0.515 with 27 images)"]),
        (empty, ["no validation images"]),
    ]
    for run_dir, fragments in cases:
        tail = "; retrain it, or pass --allow-weak to publish it anyway"
        assert_usage_error(
            capsys, ["export", str(run_dir), *common], f"{run_dir}: weak model", *fragments, tail
        )
        assert listing(repository) == before, run_dir
    with pytest.raises(UsageError, match="--allow-weak"):
        export(ExportOptions(run_dir=old, repository=tmp_path / "new_repo", name="m"))
    assert not (tmp_path / "new_repo").exists()


def quality_of(root: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    return run_quality(read_run(fake_run(root, run)))


def test_run_quality_prefers_the_trainers_verdict(tmp_path: Path) -> None:
    verdict = {**assess(CHANCE), "weak": False}
    assert (
        quality_of(tmp_path / "a", {"quality": verdict, "metrics": {"confusion_matrix": CHANCE}}) == verdict
    )
    assert quality_of(tmp_path / "b", {"metrics": {}}) is None  # a run dir made by hand: nothing to judge
    assert quality_of(tmp_path / "c", {}) is None


def test_run_quality_names_classes_from_labels_and_refuses_a_bad_matrix(tmp_path: Path) -> None:
    verdict = quality_of(tmp_path / "a", {"metrics": {"confusion_matrix": CONSTANT}})
    assert verdict is not None and "every validation image is predicted as 'red'" in verdict["reasons"]
    two = [[0, 4], [0, 4]]  # labels.txt disagrees: classes by index here, the model check says why later
    verdict = quality_of(tmp_path / "b", {"metrics": {"confusion_matrix": two}})
    assert verdict is not None and "every validation image is predicted as '1'" in verdict["reasons"]
    with pytest.raises(UsageError, match=r"run.json: metrics.confusion_matrix: .*square table of counts"):
        quality_of(tmp_path / "c", {"metrics": {"confusion_matrix": [[1, 2], [3]]}})


def tiny_keras_run(root: Path, run: dict[str, Any]) -> Path:
    """A real (if useless) run dir: mean colour -> three classes, cheap to export."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities"),
        ]
    )
    run_dir = fake_run(root, run)
    model.save(run_dir / "model.keras")
    return run_dir


def test_allow_weak_publishes_with_a_warning(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    weak = tiny_keras_run(tmp_path / "weak", {"metrics": {"confusion_matrix": CONSTANT}})
    repository = tmp_path / "repo"
    argv = ["export", str(weak), "--repository", str(repository), "--name", "colors", "--formats", "onnx"]
    assert_usage_error(capsys, argv, "weak model, not exported", "--allow-weak")
    assert listing(repository) == []
    code, out, err = run_cli(capsys, *argv, "--allow-weak")
    assert code == 0, err
    assert f"published {repository / 'colors' / '1'}" in out
    assert "WARNING: weak model published because of --allow-weak: val accuracy 0.333" in err
    assert "every validation image is predicted as 'red'" in err
    assert (repository / "colors" / "1" / "manifest.json").is_file()
