"""tf2onnx's own process: a failure is reported with its last lines, without TensorFlow's log lines
(tests/test_tfnoise.py tests the filter on TensorFlow's real lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlserve import tfnoise
from tlserve.errors import ExportError
from tlserve.exporters import onnx_export
from tlserve.exporters.onnx_export import convert_fp32


def test_a_tf2onnx_failure_ends_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "not_a_saved_model").mkdir()
    with pytest.raises(ExportError, match=r"tf2onnx failed \(exit \d+\); its last lines:") as info:
        convert_fp32(tmp_path / "not_a_saved_model", tmp_path / "model.onnx", 17)
    lines = str(info.value).encode().splitlines()
    assert not [line for line in lines if tfnoise.is_tf_noise(line)]
    assert lines[-1].startswith(b"OSError: SavedModel file does not exist at:"), lines[-1]
    assert not (tmp_path / "model.onnx").exists()


def test_tf2onnx_killed_says_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # NOTE: a real SIGKILL (the OOM killer's signal) of the converter's process, not a faked exit code
    killer = tmp_path / "python"
    killer.write_text("#!/bin/sh\nkill -9 $$\n")
    killer.chmod(0o755)
    monkeypatch.setattr(onnx_export.sys, "executable", str(killer))
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"x" * 3 * 2**20)
    with pytest.raises(
        ExportError,
        match=r"^tf2onnx was killed \(SIGKILL\), most likely out of memory: "
        r"converting this 3 MB SavedModel",
    ) as info:
        convert_fp32(saved, tmp_path / "model.onnx", 17)
    assert "--formats savedmodel" in str(info.value)
