"""Trace two Keras ops as plain TensorFlow ops that every consumer of the SavedModel can run.

Keras' TensorFlow backend writes two ops of the newer bases in a form tf2onnx cannot convert:

- **Grouped convolutions** are wrapped in an XLA-compiled function (TF's CPU kernel lacks them),
  which lands in the graph as a nested ``StatefulPartitionedCall``: tf2onnx stops there and TF
  Serving must JIT-compile it. ConvNeXt's 7x7 convolutions are grouped with one input channel per
  group (``groups == channels``), i.e. depthwise: they are traced as ``DepthwiseConv2dNative``. The
  kernel [kh, kw, 1, C*m] is reshaped to the depthwise [kh, kw, C, m] (output channel c*m + j is the
  same in both layouts). Other grouped convolutions keep Keras' own path.
- **Exact GELU** (ConvNeXt) is ``0.5 x erfc(-x / sqrt 2)`` in TensorFlow, and ONNX has no Erfc: it is
  traced as the mathematically equal ``0.5 x (1 + erf(x / sqrt 2))`` (within 1e-6 absolute).

Only the graph changes, not the Keras model: the parity gates compare every artifact with Keras.
The patch is process-wide while it lasts (Keras looks the op up at call time), so it is held under
a lock and counted: overlapping exports install it once and the last one out restores Keras' ops.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_LOCK = threading.Lock()
_DEPTH = [0]


@contextlib.contextmanager
def portable_ops() -> Iterator[None]:
    from keras.src.backend.tensorflow import nn as backend_nn

    with _LOCK:
        _DEPTH[0] += 1
        if _DEPTH[0] == 1:
            _ORIGINAL[:] = [backend_nn.conv, backend_nn.gelu]
            backend_nn.conv, backend_nn.gelu = _depthwise_conv, _erf_gelu
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                backend_nn.conv, backend_nn.gelu = _ORIGINAL


_ORIGINAL: list[Any] = []


def _depthwise_conv(inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid",
                    data_format: Any = None, dilation_rate: Any = 1) -> Any:  # fmt: skip
    from keras.src.backend.tensorflow import nn as backend_nn

    conv = _ORIGINAL[0]
    channels_last = (data_format or keras.config.image_data_format()) == "channels_last"
    channels = inputs.shape[-1] if channels_last else inputs.shape[1]
    depthwise = (
        len(inputs.shape) == 4
        and isinstance(channels, int)  # NOTE: a dynamic channel count keeps Keras' own path
        and channels != 1
        and kernel.shape[-2] == 1
        and kernel.shape[-1] % channels == 0
    )
    if not depthwise:
        return conv(inputs, kernel, strides, padding, data_format, dilation_rate)
    kernel = tf.reshape(kernel, (*kernel.shape[:2], channels, kernel.shape[-1] // channels))
    return backend_nn.depthwise_conv(
        inputs, kernel, _tuple(strides), padding, data_format, _tuple(dilation_rate)
    )


def _erf_gelu(x: Any, approximate: bool = True) -> Any:
    if approximate:
        return _ORIGINAL[1](x, approximate=True)
    x = tf.convert_to_tensor(x)
    return 0.5 * x * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0))))
