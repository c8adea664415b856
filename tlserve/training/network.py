"""Build a classifier: baked-in preprocessing -> base -> pooling -> dropout -> [hidden] -> softmax.

The base is a nested functional model named ``base``: a Keras Application without its top, or the
network of an earlier run (or any ``.keras`` file) without its classification layer. The head layers
are built once and shared between the full model and the head-only model that trains on cached
features, so training either trains both.
"""

from __future__ import annotations

import urllib.error
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from tlserve.errors import UsageError, first_line
from tlserve.training import preprocessing, taps
from tlserve.training.bases import BaseSpec
from tlserve.training.rundir import load_run_model

# Layers stripped from the end of an earlier network to leave its features.
_HEAD_LAYER_TYPES = (keras.layers.Dense, keras.layers.Dropout, keras.layers.Activation, keras.layers.Softmax)


@dataclass
class Classifier:
    model: keras.Model
    """The full model: RGB pixels 0..255 -> probabilities. This is what is saved."""
    base: keras.Model
    features: keras.Model
    """Pixels -> pooled features (preprocessing and base included): the feature-cache extractor."""
    head: keras.Model
    """Pooled features -> probabilities, sharing its layers with ``model``."""


def build_application(spec: BaseSpec, image_size: int, weights: str | None) -> keras.Model:
    """A Keras Application without top, with ``weights`` None, 'imagenet' or a path to a .h5 file."""
    builder = getattr(keras.applications, spec.builder)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            base = builder(include_top=False, weights=weights, input_shape=(image_size, image_size, 3))
        # NOTE: Keras only warns when a weights file leaves layers "freshly-initialized"; a base
        # that is partly random is not what the user asked for.
        partial = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
        if partial and weights not in (None, "imagenet"):
            raise ValueError(partial[0])
    except Exception as exc:
        if weights == "imagenet" and _is_download_failure(exc):
            raise UsageError(
                f"could not download the ImageNet weights of {spec.name} (no network?): "
                f"pass --weights PATH to a local {spec.builder} *_no_top.h5 file, --base RUN_DIR to "
                "reuse a network you trained, or --mode scratch --weights none to train one from scratch"
            ) from exc
        if weights not in (None, "imagenet"):
            raise UsageError(
                f"weights file {weights} does not fit base {spec.name} at {image_size}px: {first_line(exc)}"
            ) from exc
        if isinstance(exc, ValueError):
            raise UsageError(f"cannot build {spec.name} at {image_size}px: {first_line(exc)}") from exc
        raise
    if spec.module == "efficientnet" and weights not in (None, "imagenet"):
        base = _imagenet_std_rescaling(base)
    return keras.Model(base.inputs, base.outputs[0], name="base")


# NOTE: keras/src/applications/efficientnet.py keeps the ImageNet std (not its square) as the
# Normalization variance and adds a Rescaling(1/sqrt(std)) after it, but only when it downloads the
# weights itself (weights == "imagenet"). The same file passed as a path would leave that layer out
# and feed the pretrained convolutions inputs about 2x off, silently.
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_std_rescaling(base: keras.Model) -> keras.Model:
    """EfficientNet (B0-B7) loaded from a weights file holding ImageNet's statistics: add the
    rescaling Keras adds for ``weights="imagenet"``. A file of a network built without them (its
    Normalization variance is 1) is left as it is."""
    import numpy as np

    norm = next(layer for layer in base.layers if isinstance(layer, keras.layers.Normalization))
    if not np.allclose(np.asarray(norm.adapt_variance).ravel(), _IMAGENET_STD, atol=1e-4):
        return base
    rescaling = keras.layers.Rescaling([1.0 / s**0.5 for s in _IMAGENET_STD], name="imagenet_std_rescaling")

    clones: dict[int, keras.layers.Layer] = {}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        clones[id(layer)] = type(layer).from_config(layer.get_config())
        return clones[id(layer)]

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        out = layer(*args, **kwargs)
        return rescaling(out) if layer is clones.get(id(norm)) else out

    # NOTE: a flat graph with the rescaling spliced in after the Normalization, not a nested
    # sub-model, and fresh layers (the weights copied): taps.py and freezing.py walk the layers of
    # a later --base RUN_DIR, and taps only follow layers called once.
    flat = keras.models.clone_model(base, clone_function=clone, call_function=call)
    for layer in base.layers:
        if id(layer) in clones:
            clones[id(layer)].set_weights(layer.get_weights())
            # NOTE: what loading a file does after the weights (Keras' saving_lib); Normalization
            # reads its mean and variance from them only then
            if hasattr(clones[id(layer)], "finalize_state"):
                clones[id(layer)].finalize_state()
    return flat


def _is_download_failure(exc: BaseException) -> bool:
    # NOTE: keras.utils.get_file wraps URLError/HTTPError in a bare Exception("URL fetch failure ...").
    return isinstance(exc, urllib.error.URLError) or "URL fetch failure" in str(exc)


def build_from_earlier(path: Path) -> tuple[keras.Model, int]:
    """The network of an earlier run dir or ``.keras`` file without its classification layer.

    Returns the base (pixels -> features, its own preprocessing included) and its input size. The
    features are those of several depths (``taps``) where the network has block boundaries.
    """
    earlier = load_run_model(path)
    if len(earlier.inputs) != 1:
        raise UsageError(
            f"{path}: the earlier network must take one image input; it has {len(earlier.inputs)}"
        )
    shape = earlier.inputs[0].shape
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        raise UsageError(
            f"{path}: the earlier network must take square RGB images [N, S, S, 3]; got {tuple(shape)}"
        )
    tensor = earlier.outputs[0]
    node_layer = tensor._keras_history.operation
    stripped = 0
    while isinstance(node_layer, _HEAD_LAYER_TYPES):
        if isinstance(node_layer, keras.layers.Dense):
            stripped += 1
            if stripped > 1:
                break
        parents = node_layer._inbound_nodes[0].input_tensors
        if len(parents) != 1:
            break
        tensor = parents[0]
        node_layer = tensor._keras_history.operation
    if stripped == 0:
        raise UsageError(f"{path}: the earlier network has no Dense classification layer to replace")
    base = keras.Model(earlier.inputs, tensor, name="base")
    try:
        # NOTE: several depths, not just the last layer: see taps.py for why and what it measured.
        # A graph it cannot follow keeps the plain features rather than failing the run.
        return taps.with_taps(base, base.outputs[0]) or base, int(shape[1])
    except Exception as exc:
        print(f"note: features from the last layer only ({first_line(exc)})", flush=True)
        return base, int(shape[1])


def build_classifier(
    base: keras.Model,
    *,
    image_size: int,
    num_classes: int,
    preprocess: list[keras.layers.Layer],
    dropout: float,
    hidden: int,
    base_in_inference_mode: bool,
) -> Classifier:
    inputs = keras.Input((image_size, image_size, 3), name="image", dtype="float32")
    x = preprocessing.apply(preprocess, inputs)
    # NOTE: training=False keeps BatchNormalization in inference mode even once layers are unfrozen;
    # scratch mode leaves it to fit() so the statistics are learnt.
    x = base(x, training=False) if base_in_inference_mode else base(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif len(x.shape) != 2:
        raise UsageError(f"the base must output a feature map or a vector; got shape {tuple(x.shape)}")
    head_layers: list[keras.layers.Layer] = [keras.layers.Dropout(dropout, name="dropout")]
    if hidden:
        head_layers.append(keras.layers.Dense(hidden, activation="relu", name="hidden"))
    head_layers.append(
        keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")
    )
    features = keras.Model(inputs, x, name="features")
    feature_input = keras.Input((x.shape[-1],), name="features")
    y, z = x, feature_input
    for layer in head_layers:
        y, z = layer(y), layer(z)
    return Classifier(
        model=keras.Model(inputs, y, name="classifier"),
        base=base,
        features=features,
        head=keras.Model(feature_input, z, name="head"),
    )
