"""A run dir of a random-weight classifier on any base, as the trainer would write it: for the
benchmarks and tests that export or serve real architectures with no download and no training.

BatchNorm gets realistic statistics (one pass in training mode over random pixels, so activations do
not vanish) and the head is scaled so that outputs are far from uniform: parity is then a real test.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlserve.training.bases import BaseSpec
from tlserve.training.freezing import flatten
from tlserve.training.network import build_application, build_classifier
from tlserve.training.preprocessing import preprocessing_layers

CLASSES = 5
GATE = 1e-2
"""The parity tolerance exports of random-weight networks are held to: random deep networks amplify
float32 rounding beyond the 1e-4 gate meant for trained models (docs/bases.md)."""


def calibrate_batchnorm(base: keras.Model, size: int, preprocess: list[keras.layers.Layer]) -> None:
    """Moving statistics := the statistics of one batch of random pixels (momentum 0), fed through
    the base's own preprocessing.

    Small inputs get 32 images instead of 8: at 32 px the last stages of EfficientNet are 1x1, so a
    channel's variance would come from 8 numbers, some near zero, and the random network would
    amplify float32 rounding 30x (ONNX vs Keras 3e-3 on EfficientNetB0, 1e-4 with 32 images)."""
    layers = [layer for layer in flatten(base).leaves if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    count = 32 if size < 128 else 8
    x = np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype(np.float32)
    for layer in preprocess:
        x = layer(x)
    # NOTE: traced, not eager: called eagerly, a functional model keeps every intermediate output
    # until it returns (EfficientNetB5 at 456 px, 8 images: 12.0 GB eager, 1.6 GB traced), and the
    # export matrix's child kept that memory beside its tf2onnx (docs/training.md, "Memory")
    tf.function(lambda t: base(t, training=True))(tf.convert_to_tensor(x))
    for layer, momentum in zip(layers, saved, strict=True):
        layer.momentum = momentum


def make_run_dir(spec: BaseSpec, size: int, root: Path) -> tuple[Path, float]:
    """The run dir, and how far from uniform the model's outputs are (mean top probability)."""
    keras.utils.set_random_seed(0)
    base = build_application(spec, size, None)
    preprocess = preprocessing_layers(spec.preprocessing)
    calibrate_batchnorm(base, size, preprocess)
    clf = build_classifier(
        base,
        image_size=size,
        num_classes=CLASSES,
        preprocess=preprocess,
        dropout=0.0,
        hidden=0,
        base_in_inference_mode=True,
    )
    # NOTE: random features have any scale; scale the head so that logits are O(1), as in a trained
    # model, rather than saturating the softmax (which would make parity trivially exact). Scale by
    # the features' RMS, not their spread around a mean subtracted in the bias: that cancellation
    # would amplify float32 rounding and fail parity for a reason no trained model has.
    probe = np.random.default_rng(2).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    features = np.asarray(clf.features.predict(probe, verbose=0))
    head = clf.model.get_layer("probabilities")
    kernel = np.random.default_rng(3).normal(size=(features.shape[1], CLASSES))
    kernel *= 3.0 / (max(float(np.sqrt(np.mean(features**2))), 1e-12) * np.sqrt(features.shape[1]))
    head.set_weights([kernel.astype(np.float32), np.zeros(CLASSES, np.float32)])
    run_dir = root / spec.name
    run_dir.mkdir(parents=True)
    clf.model.save(run_dir / "model.keras")
    (run_dir / "labels.txt").write_text("".join(f"class_{i}\n" for i in range(CLASSES)))
    run = {"config": {"mode": "frozen"}, "base": {"name": spec.name}, "dataset": {}, "metrics": {}}
    (run_dir / "run.json").write_text(json.dumps(run))
    pixels = np.random.default_rng(1).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    top = float(clf.model.predict(pixels, verbose=0).max(axis=1).mean())
    return run_dir, top
