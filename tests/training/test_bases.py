"""One table, one parameterized test over it (as Keras tests its applications with MODEL_LIST)."""

from __future__ import annotations

import importlib
from pathlib import Path

import keras
import numpy as np
import pytest
from keras.applications import imagenet_utils

from tlserve.training.bases import BASES, BaseSpec, base_names, format_table, get_base
from tlserve.training.freezing import flatten
from tlserve.training.network import build_application, build_classifier
from tlserve.training.preprocessing import apply, preprocessing_layers
from tlserve.training.taps import stage_ends

SEED_TABLE_NAMES = (
    "xception vgg16 vgg19 resnet50 resnet50_v2 resnet101 resnet101_v2 resnet152 resnet152_v2 "
    "inception_v3 inception_resnet_v2 mobilenet mobilenet_v2 densenet121 densenet169 densenet201 "
    "nasnet_mobile nasnet_large"
).split()
NEWER_NAMES = (
    [f"efficientnet_b{i}" for i in range(8)]
    + [f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")]
    + [f"convnext_{v}" for v in ("tiny", "small", "base", "large", "xlarge")]
    + ["mobilenet_v3_small", "mobilenet_v3_large"]
)
ONE_PER_MODE = {"mobilenet_v2", "vgg16", "densenet121"}
ONE_PER_NEW_FAMILY = {"efficientnet_b0", "efficientnet_v2_b0", "convnext_tiny", "mobilenet_v3_small"}
IDS = [spec.name for spec in BASES]
NEWER = [spec for spec in BASES if spec.family == "newer"]

# What each newer network's own first layers must compute from RGB 0..255, as Keras' reference
# preprocessing functions (imagenet_utils) or its documented formula. EfficientNet (v1) built with
# weights=None has an unadapted Normalization (mean 0, variance 1): its ImageNet weights file
# carries the ImageNet mean/variance, which cannot be checked without the download.
_TORCH = {"mode": "torch"}
_TF = {"mode": "tf"}
STEM = {
    "efficientnet": lambda x: x / 255.0,
    "efficientnet_v2_b": lambda x: imagenet_utils.preprocess_input(x.copy(), **_TORCH),
    "efficientnet_v2_sml": lambda x: x / 128.0 - 1.0,
    "convnext": lambda x: imagenet_utils.preprocess_input(x.copy(), **_TORCH),
    "mobilenet_v3": lambda x: imagenet_utils.preprocess_input(x.copy(), **_TF),
}
STEM_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)


def _stem_kind(spec: BaseSpec) -> str:
    if spec.module == "efficientnet_v2":
        return "efficientnet_v2_b" if spec.name.split("_")[-1].startswith("b") else "efficientnet_v2_sml"
    return spec.module


def _imagenet_top_params(spec: BaseSpec, features: int) -> int:
    """Parameters of the ImageNet top that include_top=False leaves out."""
    if spec.name.startswith("vgg"):  # flatten(7x7x512) -> fc 4096 -> fc 4096 -> 1000
        return (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    if spec.module == "mobilenet_v3":  # pool -> 1x1 conv to 1024/1280 (bias) -> 1x1 conv to 1000
        last_point = 1024 if spec.name.endswith("small") else 1280
        return (features * last_point + last_point) + (last_point * 1000 + 1000)
    return features * 1000 + 1000


def test_table_covers_the_seed_table_and_the_newer_families() -> None:
    assert base_names() == SEED_TABLE_NAMES + NEWER_NAMES
    assert [s.family for s in BASES] == ["seed"] * len(SEED_TABLE_NAMES) + ["newer"] * len(NEWER_NAMES)
    for spec in BASES:
        assert spec.min_size <= spec.default_size
        assert hasattr(keras.applications, spec.builder)
        assert (spec.preprocessing == "included") == (spec.family == "newer")
    lines = format_table().splitlines()
    for name in SEED_TABLE_NAMES + NEWER_NAMES:
        (row,) = [line for line in lines if line.split()[:1] == [name]]
        assert row.split()[-1] == get_base(name).family
    (b0,) = [line.split() for line in lines if line.startswith("efficientnet_v2_b0 ")]
    assert b0[1:6] == ["EfficientNetV2B0", "7.2", "-", "78.7", "94.3"]  # keras.io's published figures


def test_unknown_base_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="valid bases: xception, vgg16"):
        get_base("resnet9000")


def _check_build(spec: BaseSpec, base: keras.Model) -> None:
    assert base.inputs[0].shape[1:] == (spec.min_size, spec.min_size, 3)
    features = int(base.outputs[0].shape[-1])
    total = base.count_params() + _imagenet_top_params(spec, features)
    # Keras publishes millions with one decimal: the full classifier must round to that figure.
    assert abs(total / 1e6 - spec.params_m) <= 0.05, (spec.name, total)


@pytest.mark.parametrize("spec", [s for s in BASES if s.family == "seed"], ids=SEED_TABLE_NAMES)
def test_builds_at_min_size_with_published_parameter_count(spec: BaseSpec) -> None:
    _check_build(spec, build_application(spec, spec.min_size, None))
    keras.backend.clear_session()


@pytest.mark.parametrize("spec", [s for s in BASES if s.family == "seed"], ids=SEED_TABLE_NAMES)
def test_baked_in_preprocessing_equals_keras(spec: BaseSpec) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (3, 17, 19, 3)).astype(np.float32)
    pixels[0, 0, 0] = (0, 128, 255)
    inputs = keras.Input((17, 19, 3))
    model = keras.Model(inputs, apply(preprocessing_layers(spec.preprocessing), inputs))
    expected = importlib.import_module(f"keras.applications.{spec.module}").preprocess_input(pixels.copy())
    got = model.predict(pixels, verbose=0)
    # Equal up to float32 rounding: Keras divides, the layers multiply by the reciprocal.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("spec", NEWER, ids=NEWER_NAMES)
def test_newer_bases_parameters_and_preprocessing_inside_the_network_once(spec: BaseSpec) -> None:
    """The table's parameter count; Keras' preprocess_input is a pass-through for them, the trainer
    adds nothing, and the network's own first layers map RGB 0..255 as Keras' reference does."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (3, spec.min_size, spec.min_size, 3)).astype(np.float32)
    pixels[0, 0, 0] = (0, 128, 255)
    keras_preprocess = importlib.import_module(f"keras.applications.{spec.module}").preprocess_input
    np.testing.assert_array_equal(keras_preprocess(pixels.copy()), pixels)
    assert preprocessing_layers(spec.preprocessing) == []
    base = build_application(spec, spec.min_size, None)
    _check_build(spec, base)  # NOTE: one build per base for both checks: the large ones take seconds
    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    stem = layers[: next(i for i, layer in enumerate(layers) if not isinstance(layer, STEM_LAYERS))]
    assert stem, f"{spec.name} does not start with its own preprocessing layers"
    got = keras.Model(base.inputs, stem[-1].output).predict(pixels, verbose=0)
    np.testing.assert_allclose(got, STEM[_stem_kind(spec)](pixels), rtol=1e-5, atol=1e-5)
    # the classifier the trainer builds holds those layers once: nothing is applied twice
    size = spec.min_size
    clf = build_classifier(base, image_size=size, num_classes=3, preprocess=[], dropout=0.0, hidden=0,
                           base_in_inference_mode=True)  # fmt: skip
    in_model = [leaf for leaf in flatten(clf.model).leaves if isinstance(leaf, STEM_LAYERS)]
    assert [leaf.name for leaf in in_model] == [layer.name for layer in stem]
    keras.backend.clear_session()


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(s, marks=[] if s.name in ONE_PER_MODE | ONE_PER_NEW_FAMILY else [pytest.mark.slow])
        for s in BASES
    ],
    ids=IDS,
)
def test_classifier_runs_at_min_size(spec: BaseSpec) -> None:
    base = build_application(spec, spec.min_size, None)
    clf = build_classifier(
        base,
        image_size=spec.min_size,
        num_classes=4,
        preprocess=preprocessing_layers(spec.preprocessing),
        dropout=0.2,
        hidden=0,
        base_in_inference_mode=True,
    )
    pixels = np.random.default_rng(1).uniform(0, 255, (2, spec.min_size, spec.min_size, 3))
    probabilities = clf.model.predict(pixels.astype(np.float32), verbose=0)
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    keras.backend.clear_session()


def test_efficientnet_from_an_imagenet_weights_file_is_scaled_as_keras_does(tmp_path: Path) -> None:
    """Keras adds Rescaling(1/sqrt(std)) after EfficientNet's Normalization only for
    weights="imagenet"; the same statistics loaded from a file must get it too, a random file not."""
    spec = get_base("efficientnet_b0")
    imagenet_like = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    norm = next(layer for layer in imagenet_like.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign([0.485, 0.456, 0.406])
    norm.adapt_variance.assign([0.229, 0.224, 0.225])  # what Keras' ImageNet file stores
    rng = np.random.default_rng(3)
    for layer in imagenet_like.layers:  # non-trainable state unlike a fresh layer's, to be carried over
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    imagenet_like.save_weights(tmp_path / "imagenet.weights.h5")
    random = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    random.save_weights(tmp_path / "random.weights.h5")
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    base = build_application(spec, 32, str(tmp_path / "imagenet.weights.h5"))
    stem = keras.Model(base.inputs, base.get_layer("imagenet_std_rescaling").output).predict(
        pixels, verbose=0
    )
    expected = imagenet_utils.preprocess_input(pixels.copy(), mode="torch")  # (x/255 - mean) / std
    np.testing.assert_allclose(stem, expected, rtol=1e-5, atol=1e-5)
    plain = build_application(spec, 32, str(tmp_path / "random.weights.h5"))
    assert "imagenet_std_rescaling" not in [layer.name for layer in plain.layers]
    for layer in imagenet_like.layers:  # every pretrained weight carried over
        if layer.weights and not layer.name.startswith("normalization"):
            for a, b in zip(layer.get_weights(), base.get_layer(layer.name).get_weights(), strict=True):
                np.testing.assert_array_equal(a, b)
    # one flat graph, as Keras builds it: a later --base RUN_DIR finds the same block ends (taps.py)
    assert not any(isinstance(layer, keras.Model) for layer in base.layers)
    ends = [t._keras_history.operation.name for t in stage_ends(base, final_size=1)]
    assert len(ends) == 3
    assert ends == [t._keras_history.operation.name for t in stage_ends(plain, final_size=1)]
    keras.backend.clear_session()
