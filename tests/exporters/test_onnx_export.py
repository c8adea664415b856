"""The converter's own process: a failure is reported with its last lines, without TensorFlow's log
lines (tests/test_tfnoise.py tests the filter on TensorFlow's real lines); the lifted converter's
constant folding, and the fallback to tf2onnx's own path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tlserve import repository as repo
from tlserve import tfnoise
from tlserve.errors import ExportError
from tlserve.exporters import onnx_export, onnx_lifted
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


def _model(nodes: list, inputs: list, outputs: list, initializers: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_constants_folds_what_only_initializers_feed() -> None:
    kernel = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3, 2])
    model = _model(
        [
            helper.make_node("Transpose", ["kernel"], ["kernel_t"], perm=[2, 1, 0]),
            helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.float32(2))),
            helper.make_node("Mul", ["kernel_t", "two"], ["scaled"]),
            helper.make_node("Add", ["x", "scaled"], ["y"]),  # fed by the input: kept
        ],
        [x],
        [y],
        [numpy_helper.from_array(kernel, "kernel")],
    )
    folded = onnx_lifted.fold_constants(model)
    assert folded == {"Transpose": 1, "Constant": 1, "Mul": 1}
    assert [n.op_type for n in model.graph.node] == ["Add"]
    assert [i.name for i in model.graph.initializer] == ["scaled"]  # "kernel" no longer needed
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=[repo.CPU]).run(
        None, {"x": np.ones((4, 3, 2), np.float32)}
    )[0]
    np.testing.assert_array_equal(got, 1 + 2 * kernel.transpose(2, 1, 0))


def test_fold_constants_keeps_a_node_that_would_grow_the_file() -> None:
    small = numpy_helper.from_array(np.ones(4, np.float32), "small")
    shape = numpy_helper.from_array(np.array([8192, 4], np.int64), "shape")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8192, 4])
    model = _model([helper.make_node("Expand", ["small", "shape"], ["y"])], [], [y], [small, shape])
    assert onnx_lifted.fold_constants(model, grow_limit=2**16) == {}
    assert [n.op_type for n in model.graph.node] == ["Expand"]


def _nested_saved_model(path: Path) -> None:
    """A SavedModel the lifted path does not take: serving_default calls a second function."""
    import tensorflow as tf

    class Nested(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(tf.random.stateless_normal([3, 5], seed=(1, 2)))

        @tf.function(jit_compile=False)
        def logits(self, x: tf.Tensor) -> tf.Tensor:
            return tf.matmul(tf.reduce_mean(x, axis=[1, 2]) / 255.0, self.w)

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name=repo.INPUT_NAME)])
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {repo.OUTPUT_NAME: tf.nn.softmax(self.logits(image))}

    module = Nested()
    tf.saved_model.save(module, str(path), signatures={repo.SIGNATURE_PIXELS: module.serve})


def test_a_saved_model_it_cannot_lift_goes_through_tf2onnx(tmp_path: Path) -> None:
    import tensorflow as tf

    saved = tmp_path / "nested"
    _nested_saved_model(saved)
    with pytest.raises(onnx_lifted.NotLiftable, match="uses a variable other than by reading it"):
        onnx_lifted.lift(saved, repo.SIGNATURE_PIXELS)
    convert_fp32(saved, tmp_path / "model.onnx", 17)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    expected = tf.saved_model.load(str(saved)).signatures[repo.SIGNATURE_PIXELS](image=pixels)
    session = onnx_export.cpu_session(tmp_path / "model.onnx")
    np.testing.assert_allclose(onnx_export.run(session, pixels), expected[repo.OUTPUT_NAME], atol=1e-6)
