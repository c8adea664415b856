"""Bad export requests: one line, exit 2; failed exports: one line, exit 3; and either way the
repository exactly as it was."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from tests.test_cli import assert_usage_error, run_cli
from tlserve import repository as repo
from tlserve.cli import EXIT_EXPORT_FAILED, main
from tlserve.exporters import options as options_module
from tlserve.exporters.export import export, summary_table
from tlserve.exporters.options import ExportOptions


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_bad_requests_leave_the_repository_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    repository = tmp_path / "repo"
    (repository / "colors" / "1").mkdir(parents=True)
    (repository / "colors" / "1" / "manifest.json").write_text("{}")
    before = listing(repository)
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "model.keras").write_text("")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    empty = tmp_path / "empty_calibration"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    common = ["--repository", str(repository)]
    cases = [
        ([str(tmp_path / "missing"), *common, "--name", "m"], ["does not exist"]),
        ([str(incomplete), *common, "--name", "m"], ["incomplete", "labels.txt", "run.json"]),
        ([str(run_dir), "--repository", str(blocker / "repo"), "--name", "m"], ["not writable"]),
        ([str(run_dir), *common, "--name", "colors", "--version", "1"], ["already exists", "next free: 2"]),
        ([str(run_dir), *common, "--name", "m", "--formats", "onnx,tflite"], ["unknown format", "tflite"]),
        ([str(run_dir), *common, "--name", "m", "--formats", "savedmodel", "--int8"], ["include onnx"]),
        ([str(run_dir), *common, "--name", "m", "--opset", "19"], ["--opset 19", "13..18"]),
        ([str(run_dir), *common, "--name", "m", "--version", "0"], ["positive"]),
        (
            [str(run_dir), *common, "--name", "m", "--int8", "--calibration-data", str(empty)],
            ["holds no images"],
        ),
        ([str(run_dir), *common, "--name", ".."], ["not allowed"]),
        ([str(run_dir), *common, "--name", "a/b"], ["not allowed"]),
        ([str(run_dir), *common, "--name", ""], ["not allowed"]),
    ]
    for argv, fragments in cases:
        assert_usage_error(capsys, ["export", *argv], *fragments)
        assert listing(repository) == before, argv


def test_inconsistent_or_corrupt_run_dirs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    import shutil

    repository = tmp_path / "repo"
    fewer_labels = tmp_path / "fewer_labels"
    shutil.copytree(run_dir, fewer_labels)
    (fewer_labels / "labels.txt").write_text("blue\ngreen\n")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt)
    (corrupt / "run.json").write_text("{ not json")
    (repository).mkdir()
    (repository / "taken").write_text("a file where the model dir would go")
    common = ["--repository", str(repository), "--formats", "onnx"]
    assert_usage_error(capsys, ["export", str(fewer_labels), *common, "--name", "m"], "2 labels", "outputs 3")
    assert_usage_error(
        capsys, ["export", str(corrupt), *common, "--name", "m"], "run.json is not readable JSON"
    )
    assert_usage_error(capsys, ["export", str(run_dir), *common, "--name", "taken"], "is not a directory")
    assert listing(repository) == ["taken"]


def test_int8_without_validation_images_is_not_recommended(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import shutil

    moved = tmp_path / "moved_run"
    shutil.copytree(run_dir, moved)
    run = json.loads((moved / "run.json").read_text())
    calibration = Path(run["dataset"]["data_dir"])
    run["dataset"]["data_dir"] = str(tmp_path / "gone")
    (moved / "run.json").write_text(json.dumps(run))
    options = ExportOptions(
        run_dir=moved, repository=tmp_path / "repo", name="m", int8=True, calibration_data=calibration
    )
    result = export(options)
    int8 = result.manifest.artifact("onnx", "int8")
    assert int8 is not None and not int8.recommended and int8.recommended_providers == []
    assert any("accuracy not measured" in note for note in int8.notes)
    assert "not recommend int8" in capsys.readouterr().err
    table = summary_table(result)
    assert "onnx int8" in table and "not recommended (see notes in manifest.json)" in table
    fp32 = result.manifest.artifact("onnx", "fp32")
    assert fp32 is not None and fp32.parity["images"] == 32  # seeded random pixels stand in


def test_parity_failure_exits_3_and_publishes_nothing(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    # NOTE: no flag sets the tolerance; zero makes the real fp32 parity check fail
    monkeypatch.setattr(options_module, "ExportOptions", functools.partial(ExportOptions, tolerance=0.0))
    argv = ["export", str(run_dir), "--repository", str(repository), "--name", "strict", "--formats", "onnx"]
    code, out, err = run_cli(capsys, *argv)
    assert code == EXIT_EXPORT_FAILED == 3, err
    lines = [line for line in err.splitlines() if line.startswith("tlserve")]
    assert len(lines) == 1 and lines == err.splitlines()[-1:], err
    assert re.fullmatch(
        r"tlserve export: failed: ONNX fp32 parity failed on \d+ images: max abs diff \S+ \(allowed 0\), "
        r"top-1 agreement \S+ \(required 1\.0\); nothing was published",
        lines[0],
    ), lines[0]
    assert listing(repository) == []  # not even the model or repository directory
    # the step that failed ends its line: the error starts a new one
    assert out.splitlines()[-1].startswith("[6/6] converting to ONNX fp32") and out.endswith(" ...\n")
    monkeypatch.undo()
    assert (
        main(["export", str(run_dir), "--repository", str(repository), "--name", "ok", "--formats", "onnx"])
        == 0
    )
    out = capsys.readouterr().out
    assert "published" in out and "onnx fp32" in out and "max|diff|" in out
    assert listing(repository)[:2] == ["ok", "ok/1"]


def test_exporting_the_same_run_twice_is_refused_unless_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    repository = tmp_path / "repo"
    argv = ["export", str(run_dir), "--repository", str(repository), "--name", "colors", "--formats", "onnx"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    manifest = repo.Manifest.read(repository / "colors" / "1")
    assert manifest.source["model_sha256"] == repo.sha256_file(run_dir / "model.keras")
    before = listing(repository)
    assert_usage_error(
        capsys, argv, f"{run_dir} is already published as version 1 of colors", "--allow-duplicate"
    )
    assert listing(repository) == before  # nothing half-written, not even a staging directory
    code, out, err = run_cli(capsys, *argv, "--allow-duplicate")
    assert code == 0, err
    assert f"published {repository / 'colors' / '2'}" in out
    assert_usage_error(capsys, argv, "already published as version 2 of colors")
