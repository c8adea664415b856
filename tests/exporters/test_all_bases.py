"""Every base of the seed table exports and keeps parity (slow: `make test-all`)."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

from tlserve import repository as repo
from tlserve.exporters.export import ExportOptions, export
from tlserve.training.bases import BASES, BaseSpec

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from export_matrix import make_run_dir


@pytest.mark.slow
@pytest.mark.parametrize("spec", BASES, ids=[s.name for s in BASES])
def test_base_exports_with_parity(spec: BaseSpec, tmp_path: Path) -> None:
    run_dir, mean_top_p = make_run_dir(spec, spec.min_size, tmp_path / "runs")
    assert mean_top_p > 0.25  # informative outputs (uniform would be 0.2), so parity means something
    result = export(ExportOptions(run_dir=run_dir, repository=tmp_path / "repo", name=spec.name))
    onnx_artifact = result.manifest.artifact("onnx", "fp32")
    assert onnx_artifact is not None
    assert onnx_artifact.parity["max_abs_diff"] <= 1e-4 and onnx_artifact.parity["top1_agreement"] == 1.0
    graph = onnx.load(str(result.path / "model.onnx")).graph
    assert [i.name for i in graph.input] == [repo.INPUT_NAME]
    assert repo.verify_checksums(result.path, result.manifest) == []
