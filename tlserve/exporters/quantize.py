"""ONNX fp32 -> int8 by static QDQ quantization, calibrated on real images (onnxruntime.quantization).

Signed int8 activations and weights (S8S8), as recommended for CPUs; never ``quantize_dynamic`` for
CNNs (12x slower here, NOTES.md). Per-tensor first; per-channel when that loses more than the
allowed accuracy. int8 that is slower or less accurate than allowed is published but not recommended.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

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
from tlserve.exporters import checks, onnx_export
from tlserve.exporters.images import LabelledImages
from tlserve.exporters.options import ExportOptions


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


def int8_artifact(
    staging: Path,
    calibration: LabelledImages,
    validation: LabelledImages | None,
    check: LabelledImages,
    reference: np.ndarray,
    options: ExportOptions,
    embedding: np.ndarray | None = None,
) -> repo.Artifact:
    """Quantize (per-tensor, then per-channel if that loses too much), measure accuracy and speed.

    The artifact is recommended for CPU only when it is measured faster than fp32 and within the
    allowed accuracy drop; otherwise ``notes`` say why not.
    """
    fp32_path, int8_path = staging / repo.ONNX_FILES["fp32"], staging / repo.ONNX_FILES["int8"]
    fp32 = onnx_export.cpu_session(fp32_path)
    accuracy: dict[str, Any] = {
        "calibration": {"images": len(calibration.pixels), "source": calibration.source}
    }
    int8 = None
    for per_channel in (False, True):
        quantize_int8(fp32_path, int8_path, calibration.pixels, per_channel=per_channel)
        int8 = onnx_export.cpu_session(int8_path)
        accuracy["per_channel"] = per_channel
        if validation is None:
            break
        fp32_top1 = np.argmax(onnx_export.run(fp32, validation.pixels), 1)
        int8_top1 = np.argmax(onnx_export.run(int8, validation.pixels), 1)
        acc32 = float(np.mean(fp32_top1 == validation.labels))
        acc8 = float(np.mean(int8_top1 == validation.labels))
        accuracy.update(
            images=len(validation.pixels),
            fp32_top1=acc32,
            int8_top1=acc8,
            delta_points=round(100 * (acc8 - acc32), 3),
            top1_agreement_with_fp32=float(np.mean(fp32_top1 == int8_top1)),
        )
        if 100 * (acc32 - acc8) <= options.int8_max_drop_points:
            break
    assert int8 is not None
    parity = checks.measure_parity(
        reference, onnx_export.run(int8, check.pixels), float("nan"), providers=int8.get_providers()
    )
    parity.pop("tolerance")
    if embedding is not None:
        parity[repo.EMBEDDING_NAME] = checks.measure_embedding(
            embedding, onnx_export.run(int8, check.pixels, repo.EMBEDDING_NAME), float("nan")
        )
        parity[repo.EMBEDDING_NAME].pop("tolerance")
    artifact = checks.onnx_artifact(staging, "int8", options.opset, parity, int8, check)
    # NOTE: fp32 and int8 timed in alternation, so machine noise hits both alike.
    fp32_ms, int8_ms = onnx_export.paired_latency_ms(
        lambda x: fp32.run(None, {repo.INPUT_NAME: x}),
        lambda x: int8.run(None, {repo.INPUT_NAME: x}),
        check.pixels,
        3 * checks.LATENCY_REPEATS,
    )
    artifact.latency_ms.update(
        batch1_p50=round(int8_ms, 3),
        fp32_batch1_p50=round(fp32_ms, 3),
        speedup_vs_fp32=round(fp32_ms / int8_ms, 3),
    )
    artifact.accuracy = accuracy
    if validation is None:
        artifact.notes.append("accuracy not measured: the run's validation images are not available")
    else:
        drop = -accuracy["delta_points"]
        if drop > options.int8_max_drop_points:
            artifact.notes.append(
                f"int8 loses {drop:.2f} accuracy points against fp32 (more than "
                f"{options.int8_max_drop_points:g}); prefer model.onnx"
            )
    if fp32_ms / int8_ms < 1.0:
        int8_ms, fp32_ms = artifact.latency_ms["batch1_p50"], artifact.latency_ms["fp32_batch1_p50"]
        artifact.notes.append(  # NOTE: the rounded figures the manifest and the summary table show
            f"int8 is not faster than fp32 on this machine ({int8_ms:.2f} ms vs {fp32_ms:.2f} ms at "
            "batch 1, timed in alternation): serve model.onnx on CPU"
        )
    if artifact.notes:
        artifact.recommended = False
        artifact.recommended_providers = []
    return artifact
