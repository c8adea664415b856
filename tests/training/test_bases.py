"""One table, one parameterized test over it (as Keras tests its applications with MODEL_LIST)."""

from __future__ import annotations

import importlib

import keras
import numpy as np
import pytest

from tlserve.training.bases import BASES, BaseSpec, base_names, format_table, get_base
from tlserve.training.network import build_application, build_classifier
from tlserve.training.preprocessing import apply, preprocessing_layers

SEED_TABLE_NAMES = (
    "xception vgg16 vgg19 resnet50 resnet50_v2 resnet101 resnet101_v2 resnet152 resnet152_v2 "
    "inception_v3 inception_resnet_v2 mobilenet mobilenet_v2 densenet121 densenet169 densenet201 "
    "nasnet_mobile nasnet_large"
).split()
ONE_PER_MODE = {"mobilenet_v2", "vgg16", "densenet121"}
IDS = [spec.name for spec in BASES]


def _imagenet_top_params(spec: BaseSpec, features: int) -> int:
    """Parameters of the ImageNet top that include_top=False leaves out."""
    if spec.name.startswith("vgg"):  # flatten(7x7x512) -> fc 4096 -> fc 4096 -> 1000
        return (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    return features * 1000 + 1000


def test_table_covers_the_seed_table() -> None:
    assert base_names() == SEED_TABLE_NAMES
    for spec in BASES:
        assert spec.min_size <= spec.default_size
        assert hasattr(keras.applications, spec.builder)
    table = format_table()
    assert all(name in table for name in SEED_TABLE_NAMES)


def test_unknown_base_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="valid bases: xception, vgg16"):
        get_base("resnet9000")


@pytest.mark.parametrize("spec", BASES, ids=IDS)
def test_builds_at_min_size_with_published_parameter_count(spec: BaseSpec) -> None:
    base = build_application(spec, spec.min_size, None)
    assert base.inputs[0].shape[1:] == (spec.min_size, spec.min_size, 3)
    features = int(base.outputs[0].shape[-1])
    total = base.count_params() + _imagenet_top_params(spec, features)
    # Keras publishes millions with one decimal: the full classifier must round to that figure.
    assert abs(total / 1e6 - spec.params_m) <= 0.05, (spec.name, total)
    keras.backend.clear_session()


@pytest.mark.parametrize("spec", BASES, ids=IDS)
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


@pytest.mark.parametrize(
    "spec",
    [pytest.param(s, marks=[] if s.name in ONE_PER_MODE else [pytest.mark.slow]) for s in BASES],
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
