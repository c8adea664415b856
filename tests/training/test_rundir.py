from __future__ import annotations

from pathlib import Path

import pytest

from tlserve.errors import UsageError
from tlserve.training.rundir import atomic_dir, check_output_dir, check_run_dir


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
