"""Each base's ``preprocess_input``, rebuilt from built-in Keras layers so it lives inside the model.

The newer families (mode ``included``) need none: their networks start with their own Rescaling /
Normalization layers and Keras' ``preprocess_input`` for them is a pass-through, so adding ours would
apply it twice.

Built-in layers only (no Lambda, no custom classes): ``model.keras`` then loads in safe mode anywhere,
and every exported artifact takes raw RGB pixels 0..255. Results equal
``keras.applications.<module>.preprocess_input`` up to float32 rounding (a multiply by 1/x where Keras
divides by x); the table-driven test checks every base.
"""

from __future__ import annotations

import keras
import numpy as np

from tlserve.training.bases import PreprocessMode

# NOTE: the constants Keras uses in keras/src/applications/imagenet_utils.py.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def preprocessing_layers(mode: PreprocessMode) -> list[keras.layers.Layer]:
    """Fresh, non-trainable layers that map RGB 0..255 to what a base of ``mode`` expects."""
    if mode == "included":
        return []
    if mode == "tf":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_tf", dtype="float32")]
    if mode == "torch":
        return [
            keras.layers.Rescaling(1.0 / 255.0, name="preprocess_torch_scale", dtype="float32"),
            keras.layers.Normalization(
                mean=list(TORCH_MEAN),
                variance=[s * s for s in TORCH_STD],
                name="preprocess_torch_normalize",
                dtype="float32",
            ),
        ]
    if mode == "caffe":
        # RGB -> BGR and minus the BGR mean in one affine map: a Dense on the channel axis with a
        # permutation kernel (exact in float32: each output is 1*x plus zeros) and the mean as bias.
        layer = keras.layers.Dense(3, name="preprocess_caffe", trainable=False, dtype="float32")
        layer.build((None, 3))
        permutation = np.eye(3, dtype=np.float32)[::-1].copy()
        layer.set_weights([permutation, -np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)])
        return [layer]
    raise ValueError(f"unknown preprocessing mode {mode!r}; expected 'tf', 'caffe', 'torch' or 'included'")


def apply(layers: list[keras.layers.Layer], x: keras.KerasTensor) -> keras.KerasTensor:
    for layer in layers:
        x = layer(x)
    return x
