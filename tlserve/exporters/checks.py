"""Measure each exported artifact against the Keras model: parity, accuracy, latency.

Every figure lands in the artifact's manifest entry. A failed fp32 check (SavedModel or ONNX) stops
the export; int8 that is slower or less accurate than allowed is published but not recommended.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlserve import repository as repo
from tlserve.errors import UsageError

if TYPE_CHECKING:
    from tlserve.exporters.export import ExportOptions

LATENCY_REPEATS = 30


def measure_parity(reference: np.ndarray, got: np.ndarray, tolerance: float, **extra: Any) -> dict[str, Any]:
    return {
        "images": len(reference),
        "max_abs_diff": float(np.max(np.abs(reference - got))),
        "top1_agreement": float(np.mean(np.argmax(reference, 1) == np.argmax(got, 1))),
        "tolerance": tolerance,
        **extra,
    }


def require(parity: dict[str, Any], what: str) -> None:
    """Fail the export, with the figures, unless ``parity`` is within its tolerance with equal top-1."""
    if parity["max_abs_diff"] > parity["tolerance"] or parity["top1_agreement"] < 1.0:
        raise UsageError(
            f"{what} parity failed on {parity['images']} images: max abs diff "
            f"{parity['max_abs_diff']:.3g} (allowed {parity['tolerance']:g}), top-1 agreement "
            f"{parity['top1_agreement']:.4f} (required 1.0); nothing was published"
        )


def check_savedmodel(path: Path, check: Any, reference: np.ndarray, options: ExportOptions) -> repo.Artifact:
    """Both signatures against Keras: pixels on every check image, encoded files on the real ones."""
    import tensorflow as tf

    from tlserve.exporters import onnx_export, savedmodel

    signatures = savedmodel.load_signatures(path)
    pixels_fn = signatures[repo.SIGNATURE_PIXELS]
    got = np.concatenate(
        [
            pixels_fn(**{repo.INPUT_NAME: tf.constant(check.pixels[i : i + 32])})[repo.OUTPUT_NAME].numpy()
            for i in range(0, len(check.pixels), 32)
        ]
    )
    parity = measure_parity(reference, got, options.tolerance, signature=repo.SIGNATURE_PIXELS)
    require(parity, f"SavedModel {repo.SIGNATURE_PIXELS}")
    files = check.files[:32]
    if files:
        encoded = tf.constant([p.read_bytes() for p in files])
        from_files = signatures[repo.SIGNATURE_IMAGES](**{repo.IMAGES_INPUT_NAME: encoded})
        images_parity = measure_parity(
            reference[: len(files)], from_files[repo.OUTPUT_NAME].numpy(), options.tolerance
        )
        require(images_parity, f"SavedModel {repo.SIGNATURE_IMAGES}")
        parity[repo.SIGNATURE_IMAGES] = images_parity
    else:
        parity[repo.SIGNATURE_IMAGES] = "not measured: the run's image files are not available"
    latency = onnx_export.latency_ms(
        lambda x: pixels_fn(**{repo.INPUT_NAME: tf.constant(x)}), check.pixels, LATENCY_REPEATS
    )
    rel = savedmodel.savedmodel_files(path)
    return repo.Artifact(
        kind="savedmodel",
        files=repo.file_digests(path, rel),
        bytes=sum((path / f).stat().st_size for f in rel),
        parity=parity,
        latency_ms={"batch1_p50": round(latency, 3), "runtime": f"tensorflow {tf.__version__} CPU"},
    )


def onnx_artifact(
    staging: Path, precision: str, opset: int, parity: dict[str, Any], session: Any, check: Any
) -> repo.Artifact:
    from tlserve.exporters import onnx_export

    file = repo.ONNX_FILES[precision]
    latency = onnx_export.latency_ms(
        lambda x: session.run(None, {repo.INPUT_NAME: x}), check.pixels, LATENCY_REPEATS
    )
    return repo.Artifact(
        kind="onnx",
        files=repo.file_digests(staging, [file]),
        bytes=(staging / file).stat().st_size,
        precision=precision,
        opset=opset,
        recommended_providers=list(repo.RECOMMENDED_PROVIDERS[precision]),
        parity=parity,
        latency_ms={"batch1_p50": round(latency, 3), "providers": session.get_providers()},
    )


def int8_artifact(
    staging: Path,
    calibration: Any,
    validation: Any,
    check: Any,
    reference: np.ndarray,
    options: ExportOptions,
    quantize: Any,
) -> repo.Artifact:
    """Quantize (per-tensor, then per-channel if that loses too much), measure accuracy and speed.

    The artifact is recommended for CPU only when it is measured faster than fp32 and within the
    allowed accuracy drop; otherwise ``notes`` say why not.
    """
    from tlserve.exporters import onnx_export

    fp32_path, int8_path = staging / repo.ONNX_FILES["fp32"], staging / repo.ONNX_FILES["int8"]
    fp32 = onnx_export.cpu_session(fp32_path)
    accuracy: dict[str, Any] = {
        "calibration": {"images": len(calibration.pixels), "source": calibration.source}
    }
    int8 = None
    for per_channel in (False, True):
        quantize(fp32_path, int8_path, calibration.pixels, per_channel=per_channel)
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
    parity = measure_parity(
        reference, onnx_export.run(int8, check.pixels), float("nan"), providers=int8.get_providers()
    )
    parity.pop("tolerance")
    artifact = onnx_artifact(staging, "int8", options.opset, parity, int8, check)
    # NOTE: fp32 and int8 timed in alternation, so machine noise hits both alike.
    fp32_ms, int8_ms = onnx_export.paired_latency_ms(
        lambda x: fp32.run(None, {repo.INPUT_NAME: x}),
        lambda x: int8.run(None, {repo.INPUT_NAME: x}),
        check.pixels,
        3 * LATENCY_REPEATS,
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
