"""Features from several depths of an earlier network (taps.py): which tensors, and the saved model."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tlserve.training.network import build_from_earlier
from tlserve.training.taps import stage_ends


def names(tensors: list[object]) -> list[str]:
    return [t._keras_history.operation.name for t in tensors]  # type: ignore[attr-defined]


def test_stage_ends_are_the_last_block_outputs_at_each_resolution() -> None:
    mobilenet = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    # residual blocks: the last Add at 8, 4 and 2 px (out_relu at 1 px is the final features)
    assert names(stage_ends(mobilenet, final_size=1)) == ["block_2_add", "block_5_add", "block_12_add"]
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    # no merges: the pooling layer that ends each stage
    assert names(stage_ends(vgg, final_size=1)) == ["block2_pool", "block3_pool", "block4_pool"]
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="b")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c")(x)
    plain = keras.Model(inputs, x)
    # neither: any boundary, the last one at each size other than the final
    assert names(stage_ends(plain, final_size=8)) == ["a"]


def test_an_earlier_run_shaped_network_gets_taps_and_still_loads_in_safe_mode(tmp_path: Path) -> None:
    inner = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    inner = keras.Model(inner.inputs, inner.outputs[0], name="base")
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess_tf")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(inner(x, training=False))
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    path = tmp_path / "earlier.keras"
    keras.Model(inputs, outputs).save(path)
    base, size = build_from_earlier(path)
    assert size == 32
    assert base.outputs[0].shape[-1] == 24 + 32 + 96 + 1280
    trunk = base.get_layer("trunk")
    assert names(trunk.outputs) == ["block_2_add", "block_5_add", "block_12_add", "out_relu"]
    assert base.get_layer("preprocess_tf") is not None  # the earlier network's own preprocessing
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    features = base.predict(pixels, verbose=0)
    # the last 1280 features are the earlier network's own pooled features
    earlier = keras.models.load_model(path, safe_mode=True)
    own = keras.Model(earlier.inputs, earlier.get_layer("pool").output).predict(pixels, verbose=0)
    np.testing.assert_allclose(features[:, -1280:], own, rtol=1e-5, atol=1e-5)
    saved = tmp_path / "base.keras"
    base.save(saved)
    reloaded = keras.models.load_model(saved, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), features, rtol=1e-5, atol=1e-5)


def test_graphs_it_cannot_follow_keep_the_plain_features(tmp_path: Path) -> None:
    sequential = keras.Sequential(
        [
            keras.Input((24, 24, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(8, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    sequential.save(tmp_path / "sequential.keras")
    base, _ = build_from_earlier(tmp_path / "sequential.keras")
    assert base.outputs[0].shape[-1] == 8
    # features behind a nested network (an earlier run trained with --hidden): plain features
    inner = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    x = keras.layers.Dense(12, activation="relu", name="hidden")(x)
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "hidden.keras")
    base, _ = build_from_earlier(tmp_path / "hidden.keras")
    assert base.outputs[0].shape[-1] == 12


def test_convnext_stage_ends_are_its_ops_level_residual_adds() -> None:
    # NOTE: ConvNeXt merges with `inputs + x` (an ops-level Add, no weights): once a crash
    # (AttributeError: no .weights) that made an earlier ConvNeXt run fall back to its last layer
    convnext = keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=(32, 32, 3))
    ends = stage_ends(convnext, final_size=1)
    assert len(ends) == 3
    assert all(type(t._keras_history.operation).__name__ == "Add" for t in ends)  # type: ignore[attr-defined]
    assert [int(t.shape[1]) for t in ends] == [8, 4, 2]
