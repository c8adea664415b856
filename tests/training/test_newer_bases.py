"""The newer families end to end, the way a user runs them: `tlserve train --mode finetune` on tiny
data, then `tlserve export` of that run (its parity gates), with MobileNetV3's hard-swish through int8.

Random weights files stand in for ImageNet (no download); the point is the pipeline, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import random_weights, write_folder
from tlserve import repository as repo
from tlserve.cli import main
from tlserve.exporters import calibration
from tlserve.training import rundir
from tlserve.training.freezing import flatten

FAST = {"efficientnet_v2_b0"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "colors", per_class=8)


def train_finetune(data: Path, out: Path, base: str) -> dict[str, object]:
    argv = ["train", str(data), "--out", str(out), "--base", base, "--mode", "finetune",
            "--weights", random_weights(base), "--image-size", "32", "--epochs", "2",
            "--fine-tune-epochs", "2", "--unfreeze", "20", "--batch-size", "8", "--no-augment"]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / rundir.RUN_FILE).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "base",
    [pytest.param(b, marks=[] if b in FAST else [pytest.mark.slow])
     for b in ("efficientnet_v2_b0", "efficientnet_b0", "convnext_tiny", "mobilenet_v3_small")],
)  # fmt: skip
def test_finetune_then_export_end_to_end(data: Path, tmp_path: Path, base: str) -> None:
    run = train_finetune(data, tmp_path / "run", base)
    assert [p["name"] for p in run["phases"]] == ["head", "finetune"]  # type: ignore[index]
    fine = run["phases"][1]  # type: ignore[index]
    assert fine["unfrozen_layers"] >= 20 and fine["trainable_params"] > run["phases"][0]["trainable_params"]  # type: ignore[index]
    assert run["base"]["preprocessing"] == "included"  # type: ignore[index]
    model = keras.models.load_model(tmp_path / "run" / rundir.MODEL_FILE, safe_mode=True)
    # nothing added in front of the base: its own first layers are the only preprocessing
    assert not [layer.name for layer in model.layers if layer.name.startswith("preprocess_")]
    leaves = flatten(model.get_layer("base")).leaves
    assert not any(leaf.trainable for leaf in leaves if isinstance(leaf, keras.layers.BatchNormalization))
    repository = tmp_path / "repo"
    assert main(["export", str(tmp_path / "run"), "--repository", str(repository), "--name", "m",
                 "--allow-weak"]) == 0  # fmt: skip
    version = repository / "m" / "1"
    manifest = repo.Manifest.read(version)
    assert repo.verify_checksums(version, manifest) == []
    onnx_fp32 = manifest.artifact("onnx", "fp32")
    assert onnx_fp32 is not None and onnx_fp32.parity["max_abs_diff"] <= 1e-4  # the real export gate
    pixels = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    # the version serves the calibrated scores: the run's model with the manifest's temperature
    served = calibration.served_model(model, manifest.calibration["temperature"])
    np.testing.assert_allclose(
        session.run([repo.OUTPUT_NAME], {"image": pixels})[0], served.predict(pixels, verbose=0), atol=1e-4
    )
    keras.backend.clear_session()


@pytest.mark.slow
def test_mobilenet_v3_hard_swish_through_int8(data: Path, tmp_path: Path) -> None:
    train_finetune(data, tmp_path / "run", "mobilenet_v3_small")
    repository = tmp_path / "repo"
    assert main(["export", str(tmp_path / "run"), "--repository", str(repository), "--name", "m", "--int8",
                 "--allow-weak"]) == 0  # fmt: skip
    manifest = repo.Manifest.read(repository / "m" / "1")
    int8 = manifest.artifact("onnx", "int8")
    assert int8 is not None and "top1_agreement" in int8.parity
    assert int8.recommended or int8.notes  # published, and if not recommended it says why
    version = repository / "m" / "1"
    fp32_ops = {node.op_type for node in onnx.load(str(version / "model.onnx")).graph.node}
    int8_ops = {node.op_type for node in onnx.load(str(version / "model.int8.onnx")).graph.node}
    # hard-swish x * relu6(x + 3) / 6 arrives as Add, Clip and Mul; quantization folds the Clip into
    # the ranges of its QuantizeLinear and keeps Add and Mul between Q/DQ pairs
    assert {"Add", "Clip", "Mul"} <= fp32_ops
    assert {"QuantizeLinear", "DequantizeLinear", "Add", "Mul"} <= int8_ops
