"""The run-dir contract: written whole or not at all, and read back checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlserve.errors import UsageError
from tlserve.training.rundir import (
    Phase,
    atomic_dir,
    check_output_dir,
    check_run_dir,
    read_labels,
    read_run,
)


def test_atomic_dir_publishes_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "run"
    with atomic_dir(out) as work:
        (work / "model.keras").write_text("x")
        assert not out.exists()
    assert (out / "model.keras").read_text() == "x"
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "run"
    with pytest.raises(type(error)), atomic_dir(out) as work:
        (work / "half.txt").write_text("half")
        raise error
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_an_old_run_whole(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as work:
        (work / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_output_and_run_dir_checks(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new", overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=False)
    with pytest.raises(UsageError, match="does not exist"):
        check_run_dir(tmp_path / "missing")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "run.json").write_text("{}")
    with pytest.raises(UsageError, match=r"incomplete: missing model\.keras, labels\.txt"):
        check_run_dir(tmp_path / "partial")


def write_run(root: Path, run: object) -> Path:
    root.mkdir()
    (root / "run.json").write_text(json.dumps(run))
    return root


def test_read_run_types_what_it_reads(tmp_path: Path) -> None:
    run = {
        "config": {"mode": "finetune"},
        "base": {"name": "mobilenet_v2", "earlier": None, "layers": 154},
        "phases": [{"name": "head", "learning_rate": 1e-3}, {"name": "finetune", "learning_rate": None}],
        "dataset": {"data_dir": "/data", "val_data_dir": None, "val_files": ["red/a.png"]},
        "metrics": {"accuracy": 1, "loss": 0.25, "images": 4, "confusion_matrix": [[2, 0], [0, 2]]},
        "quality": {"weak": False, "reasons": []},
        "versions": {"keras": "3"},
    }
    record = read_run(write_run(tmp_path / "run", run))
    assert record.file == tmp_path / "run" / "run.json"
    assert record.mode == "finetune" and record.base_name == "mobilenet_v2" and record.earlier is None
    assert record.base == run["base"]  # the manifest carries it as written
    assert record.phases == (Phase("head", 1e-3), Phase("finetune", None))
    assert record.data_dir == Path("/data") and record.val_data_dir is None
    assert record.val_files == ("red/a.png",)
    assert (record.accuracy, record.loss, record.val_images) == (1.0, 0.25, 4)
    assert record.confusion_matrix == [[2, 0], [0, 2]] and record.quality == run["quality"]
    empty = read_run(write_run(tmp_path / "hand_made", {}))  # older or hand-made runs lack sections
    assert empty.mode is None and empty.phases == () and empty.data_dir is None and empty.quality is None
    assert read_run(write_run(tmp_path / "no_verdict", {"quality": {"weak": "no"}})).quality is None


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ("[1, 2]", "run.json does not hold a JSON object"),
        ("{ not json", "run.json is not readable JSON: "),
        ('{"dataset": []}', "run.json: dataset: expected an object; got []"),
        ('{"dataset": {"val_files": "a.png"}}', "run.json: dataset.val_files: expected a list of strings"),
        ('{"phases": [1]}', "run.json: phases: expected a list of objects; got [1]"),
        ('{"config": {"mode": 3}}', "run.json: config.mode: expected a string; got 3"),
        ('{"metrics": {"accuracy": "high"}}', "run.json: metrics.accuracy: expected a number; got 'high'"),
        ('{"metrics": {"images": 2.5}}', "run.json: metrics.images: expected an integer; got 2.5"),
        (
            '{"metrics": {"confusion_matrix": [["1"]]}}',
            "metrics.confusion_matrix: expected a table of counts",
        ),
    ],
)
def test_a_corrupt_run_json_is_one_line_naming_the_field(tmp_path: Path, run: str, message: str) -> None:
    (tmp_path / "run.json").write_text(run)
    with pytest.raises(UsageError) as info:
        read_run(tmp_path)
    assert str(info.value).startswith(str(tmp_path)) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_or_unreadable_run_dir_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"incomplete: missing run\.json$"):
        read_run(tmp_path)
    with pytest.raises(UsageError, match=r"incomplete: missing labels\.txt$"):
        read_labels(tmp_path)
    (tmp_path / "labels.txt").write_bytes(b"red\n\xff\xfe\n")
    with pytest.raises(UsageError, match=r"labels\.txt is not readable UTF-8 text: "):
        read_labels(tmp_path)
