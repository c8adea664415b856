"""Every base of `tlserve bases` exports and keeps parity (slow: `make test-all`)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tlserve import repository as repo
from tlserve.exporters.export import ExportOptions, export
from tlserve.training.bases import BASES, BaseSpec
from tlserve.training.synthetic import GATE, make_run_dir


@pytest.mark.slow
@pytest.mark.parametrize("spec", BASES, ids=[s.name for s in BASES])
def test_base_exports_with_parity(spec: BaseSpec, tmp_path: Path) -> None:
    run_dir, mean_top_p = make_run_dir(spec, spec.min_size, tmp_path / "runs")
    assert mean_top_p > 0.25  # informative outputs (uniform would be 0.2), so parity means something
    # NOTE: random deep networks amplify float32 rounding beyond the 1e-4 gate meant for trained
    # models (see docs/bases.md), so the export runs with the matrix's loose gate and this test
    # holds it to 1e-3 and to identical top-1 on its own images.
    options = ExportOptions(run_dir=run_dir, repository=tmp_path / "repo", name=spec.name, tolerance=GATE)
    result = export(options)
    # parity checked again here, independently of the exporter's own check
    model = keras.models.load_model(run_dir / "model.keras")
    size = spec.min_size
    pixels = np.random.default_rng(7).uniform(0, 255, (16, size, size, 3)).astype(np.float32)
    session = ort.InferenceSession(str(result.path / "model.onnx"), providers=["CPUExecutionProvider"])
    got, expected = session.run(None, {"image": pixels})[0], model.predict(pixels, verbose=0)
    assert np.abs(got - expected).max() <= 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()
    graph = onnx.load(str(result.path / "model.onnx")).graph
    assert [i.name for i in graph.input] == [repo.INPUT_NAME]
    assert repo.verify_checksums(result.path, result.manifest) == []
