"""A tiny real classifier as an ONNX model, written straight into a model repository (no TensorFlow).

The network averages the image's RGB pixels and maps them linearly to three logits (red, green,
blue), then softmax: it really classifies the colour images of tests.conftest.write_folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tlserve import repository as repo

LABELS = ["blue", "green", "red"]
SIZE = 16


def color_model(scale: float = 0.02, work: int = 0) -> onnx.ModelProto:
    """image [N, SIZE, SIZE, 3] float32 -> probabilities [N, 3] over LABELS.

    ``work`` > 0 adds that many 768x768 matrix products per image whose result nudges the logits by
    ~1e-9: the same answers, but a real per-image compute cost (≈ 1.2 MFLOP each) for load tests."""
    weights = np.array([[-1, -1, 2], [-1, 2, -1], [2, -1, -1]], np.float32).T * scale  # rgb -> b, g, r
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["logits0" if work else "logits"]),
    ]
    initializers = [numpy_helper.from_array(weights, "weights")]
    if work:
        width = SIZE * SIZE * 3
        square = (np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)).astype(
            np.float32
        )
        initializers += [
            numpy_helper.from_array(square, "square"),
            numpy_helper.from_array(np.array([-1, width], np.int64), "flat"),
            numpy_helper.from_array(np.full((1, len(LABELS)), 1e-9, np.float32), "tiny"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ]
        nodes.append(helper.make_node("Reshape", ["image", "flat"], ["h0"]))
        for i in range(work):
            nodes += [helper.make_node("MatMul", [f"h{i}", "square"], [f"m{i}"]),
                      helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]  # fmt: skip
        nodes += [
            helper.make_node("ReduceSum", [f"h{work}", "axis1"], ["total"], keepdims=1),
            helper.make_node("Mul", ["total", "tiny"], ["nudge"]),
            helper.make_node("Add", ["logits0", "nudge"], ["logits"]),
        ]
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, "colors",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def publish(repository: Path, name: str, version: int, scale: float = 0.02, work: int = 0) -> Path:
    """Write version ``version`` of ``name`` the way the exporter does: staging dir, then rename."""
    model_dir = repository / name
    staging = model_dir / f"{repo.STAGING_PREFIX}{version}"
    staging.mkdir(parents=True)
    onnx.save(color_model(scale, work), staging / repo.ONNX_FILES["fp32"])
    (staging / repo.LABELS_FILE).write_text("\n".join(LABELS) + "\n")
    onnx_file = repo.ONNX_FILES["fp32"]
    manifest = repo.Manifest(
        name=name, version=version, created="2026-11-28T00:00:00Z", labels=list(LABELS),
        input=repo.InputSpec(name=repo.INPUT_NAME, shape=[-1, SIZE, SIZE, 3], dtype="float32"),
        outputs=[repo.TensorSpec(name=repo.OUTPUT_NAME, shape=[-1, len(LABELS)], dtype="float32")],
        base={"name": "tiny-colors", "mode": "frozen"}, validation={}, signatures={},
        artifacts=[repo.Artifact(kind="onnx", files=repo.file_digests(staging, [onnx_file]),
                                 bytes=(staging / onnx_file).stat().st_size, opset=17,
                                 recommended_providers=list(repo.RECOMMENDED_PROVIDERS["fp32"]))],
        labels_sha256=repo.sha256_file(staging / repo.LABELS_FILE),
    )  # fmt: skip
    manifest.write(staging)
    final = model_dir / str(version)
    staging.rename(final)
    return final


def copy_version(
    repository: Path,
    name: str,
    source: int,
    version: int,
    to_name: str | None = None,
    corrupt: str | None = None,
) -> Path:
    """Publish an existing version again as operators do (``cp -r 2 .tmp && mv .tmp 3``): copied
    as it is, manifest included, beside the versions of ``to_name`` (default ``name``) under a
    hidden name, then renamed to ``version``. ``corrupt`` names a file overwritten with garbage
    before the rename (so a server can never see the good copy)."""
    model_dir = repository / (to_name or name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".copy-{version}"
    shutil.copytree(repository / name / str(source), staging)
    if corrupt is not None:
        (staging / corrupt).write_bytes(b"garbage")
    final = model_dir / str(version)
    staging.rename(final)
    return final
