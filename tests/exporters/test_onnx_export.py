"""tf2onnx's own process: a failure is reported with its last lines, without TensorFlow's log lines
(tests/test_tfnoise.py tests the filter on TensorFlow's real lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlserve import tfnoise
from tlserve.errors import ExportError
from tlserve.exporters.onnx_export import convert_fp32


def test_a_tf2onnx_failure_ends_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "not_a_saved_model").mkdir()
    with pytest.raises(ExportError, match=r"tf2onnx failed \(exit \d+\); its last lines:") as info:
        convert_fp32(tmp_path / "not_a_saved_model", tmp_path / "model.onnx", 17)
    lines = str(info.value).encode().splitlines()
    assert not [line for line in lines if tfnoise.is_tf_noise(line)]
    assert lines[-1].startswith(b"OSError: SavedModel file does not exist at:"), lines[-1]
    assert not (tmp_path / "model.onnx").exists()
