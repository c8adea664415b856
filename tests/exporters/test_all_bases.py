"""Every base of `tlserve bases` exports and keeps parity (slow: `make test-all`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

from tlserve import repository as repo
from tlserve.exporters import savedmodel
from tlserve.exporters.export import ExportOptions, export
from tlserve.exporters.options import TOLERANCE
from tlserve.training.bases import BASES, BaseSpec
from tlserve.training.synthetic import GATE, make_run_dir

SIZE = 64
"""The newer families' input size here: at 32 px the deepest feature maps of EfficientNet are 1x1
and a random network's BatchNorm statistics come from a handful of numbers (synthetic.py). The
classics keep their minimum size and the 1e-3 they have always been held to (at 64 px ResNet152's
ONNX was 1.3e-3 off, with TF's own SavedModel 6.9e-4 off: the random network, not the converter)."""
CLASSICS = 1e-3


def allowed(tf_diff: float) -> float:
    """A newer base's limit: the exporter's 1e-4 while TensorFlow's own SavedModel is within a tenth
    of it; beyond, the random network is ill-conditioned and ONNX may miss by up to ten times what
    TF itself misses (at most 1e-3)."""
    return TOLERANCE if tf_diff <= TOLERANCE / 10 else min(CLASSICS, 10 * tf_diff)


@pytest.mark.slow
@pytest.mark.parametrize("spec", BASES, ids=[s.name for s in BASES])
def test_base_exports_with_parity(spec: BaseSpec, tmp_path: Path) -> None:
    newer = spec.family == "newer"
    size = max(spec.min_size, SIZE) if newer else spec.min_size
    run_dir, mean_top_p = make_run_dir(spec, size, tmp_path / "runs")
    assert mean_top_p > 0.25  # informative outputs (uniform would be 0.2), so parity means something
    # NOTE: random deep networks amplify float32 rounding beyond the 1e-4 gate meant for trained
    # models (see docs/bases.md), so the export runs with the matrix's loose gate; this test holds
    # each base to its own limit below.
    options = ExportOptions(run_dir=run_dir, repository=tmp_path / "repo", name=spec.name, tolerance=GATE)
    result = export(options)
    # parity checked again here, independently of the exporter's own check, and TF's own SavedModel
    # on the same pixels says how well-conditioned this random network is
    model = keras.models.load_model(run_dir / "model.keras")
    pixels = np.random.default_rng(7).uniform(0, 255, (16, size, size, 3)).astype(np.float32)
    session = ort.InferenceSession(str(result.path / "model.onnx"), providers=["CPUExecutionProvider"])
    got, expected = session.run(None, {"image": pixels})[0], model.predict(pixels, verbose=0)
    serving = savedmodel.load_signatures(result.path)[repo.SIGNATURE_PIXELS]
    tf_got = serving(**{repo.INPUT_NAME: tf.constant(pixels)})[repo.OUTPUT_NAME].numpy()
    tf_diff = float(np.abs(tf_got - expected).max())
    limit = allowed(tf_diff) if newer else CLASSICS
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        why = "a classic" if not newer else "10x TF's miss" if limit > TOLERANCE else "the exporter's gate"
        warnings.warn(
            f"{spec.name}: ONNX vs Keras {diff:.1e} with SavedModel vs Keras {tf_diff:.1e}: "
            f"held to {limit:.1e} ({why})",
            stacklevel=1,
        )
    assert diff <= limit, (spec.name, diff, tf_diff)
    assert (got.argmax(1) == expected.argmax(1)).all()
    graph = onnx.load(str(result.path / "model.onnx")).graph
    assert [i.name for i in graph.input] == [repo.INPUT_NAME]
    assert repo.verify_checksums(result.path, result.manifest) == []
