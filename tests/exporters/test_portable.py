"""ConvNeXt's two ops that tf2onnx cannot take from Keras as they are, on a tiny model: grouped
convolutions with one channel per group (depthwise, multiplier 1 and 2) and exact GELU."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort

from tlserve.exporters import onnx_export, savedmodel
from tlserve.exporters.portable import portable_ops


def tiny() -> keras.Model:
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(3, 3, padding="same", groups=3)(inputs)  # depthwise, multiplier 1
    x = keras.layers.Activation("gelu")(x)  # exact GELU (approximate=False)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="valid", groups=3)(x)  # multiplier 2, stride 2
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(x))


def test_grouped_depthwise_conv_and_exact_gelu_convert_with_parity(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = tiny()
    from keras.src.backend.tensorflow import nn as backend_nn

    before = (backend_nn.conv, backend_nn.gelu)
    savedmodel.export_savedmodel(model, tmp_path / "sm", "tiny")
    assert (backend_nn.conv, backend_nn.gelu) == before  # Keras' own ops are back
    onnx_export.convert_fp32(tmp_path / "sm", tmp_path / "model.onnx", 17)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "Erf" in ops and "Erfc" not in ops
    assert [n.attribute for n in graph.node if n.op_type == "Conv"]  # the grouped convs became Conv ops
    pixels = np.random.default_rng(1).uniform(0, 255, (5, 12, 12, 3)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {"image": pixels})[0], model.predict(pixels, verbose=0), atol=1e-5
    )


def test_the_patch_nests_and_is_restored_on_error() -> None:
    from keras.src.backend.tensorflow import nn as backend_nn

    before = backend_nn.conv
    try:
        with portable_ops():
            with portable_ops():
                assert backend_nn.conv is not before
            assert backend_nn.conv is not before  # the outer export still traces portably
            raise RuntimeError("export failed")
    except RuntimeError:
        pass
    assert backend_nn.conv is before
