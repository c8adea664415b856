"""ONNX fp32 -> int8 by static QDQ quantization, calibrated on real images (onnxruntime.quantization).

Signed int8 activations and weights (S8S8), as recommended for CPUs; never ``quantize_dynamic`` for
CNNs (12x slower here, NOTES.md). Per-tensor first; per-channel when that loses more than the
allowed accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from tlserve import repository as repo


class _Images(CalibrationDataReader):
    def __init__(self, pixels: np.ndarray, batch_size: int = 8) -> None:
        self.batches = iter([pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {repo.INPUT_NAME: batch}


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, *, per_channel: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # NOTE: skip_symbolic_shape: onnxruntime 1.32 does not install sympy, which that step needs.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # NOTE: the final softmax stays float: quantized, its output moves in steps of 1/256 and the
        # scores no longer sum to one.
        softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(prepared),
            str(out),
            _Images(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            nodes_to_exclude=softmax,
        )
