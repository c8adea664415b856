"""Measure each exported artifact against the Keras model: parity and latency.

Every figure lands in the artifact's manifest entry. A failed fp32 check (SavedModel or ONNX) stops
the export with an ExportError; int8 (``quantize``) is measured for accuracy instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlserve import repository as repo
from tlserve.errors import ExportError
from tlserve.exporters.options import ExportOptions, check_batch

if TYPE_CHECKING:
    import onnxruntime as ort

    from tlserve.exporters.images import LabelledImages

LATENCY_REPEATS = 30


def measure_parity(reference: np.ndarray, got: np.ndarray, tolerance: float, **extra: Any) -> dict[str, Any]:
    return {
        "images": len(reference),
        "max_abs_diff": float(np.max(np.abs(reference - got))),
        "top1_agreement": float(np.mean(np.argmax(reference, 1) == np.argmax(got, 1))),
        "tolerance": tolerance,
        **extra,
    }


def measure_embedding(reference: np.ndarray, got: np.ndarray, tolerance: float) -> dict[str, Any]:
    """The ``embedding`` output against Keras: its largest difference relative to its largest value
    (at least 1), so one tolerance fits features of any magnitude."""
    scale = max(1.0, float(np.max(np.abs(reference))))
    diff = float(np.max(np.abs(reference - got)))
    return {
        "images": len(reference),
        "max_abs_diff": diff,
        "largest_value": scale,
        "relative_diff": diff / scale,
        "tolerance": tolerance,
    }


def require_embedding(parity: dict[str, Any], what: str) -> None:
    if not parity["relative_diff"] <= parity["tolerance"]:
        raise ExportError(
            f"{what} embedding parity failed on {parity['images']} images: max abs diff "
            f"{parity['max_abs_diff']:.3g}, {parity['relative_diff']:.3g} of the largest feature "
            f"{parity['largest_value']:.3g} (allowed {parity['tolerance']:g}); nothing was published"
        )


def require(parity: dict[str, Any], what: str) -> None:
    """Fail the export, with the figures, unless ``parity`` is within its tolerance with equal top-1."""
    if parity["max_abs_diff"] > parity["tolerance"] or parity["top1_agreement"] < 1.0:
        raise ExportError(
            f"{what} parity failed on {parity['images']} images: max abs diff "
            f"{parity['max_abs_diff']:.3g} (allowed {parity['tolerance']:g}), top-1 agreement "
            f"{parity['top1_agreement']:.4f} (required 1.0); nothing was published"
        )


def _batched(signature: Any, input_name: str, items: Any, batch: int) -> dict[str, np.ndarray]:
    """A SavedModel signature's outputs over ``items`` in batches of ``batch`` (see ``check_batch``)."""
    import tensorflow as tf

    parts = [
        signature(**{input_name: tf.constant(items[i : i + batch])}) for i in range(0, len(items), batch)
    ]
    return {name: np.concatenate([p[name].numpy() for p in parts]) for name in parts[0]}


def check_savedmodel(
    path: Path,
    check: LabelledImages,
    reference: np.ndarray,
    options: ExportOptions,
    embedding: np.ndarray | None = None,
) -> repo.Artifact:
    """Both signatures against Keras: pixels on every check image, encoded files on the real ones;
    ``embedding``: Keras' second output on the check images, when the model has one."""
    import tensorflow as tf

    from tlserve.exporters import onnx_export, savedmodel

    signatures = savedmodel.load_signatures(path)
    pixels_fn = signatures[repo.SIGNATURE_PIXELS]
    batch = check_batch(check.pixels.shape[1])
    got = _batched(pixels_fn, repo.INPUT_NAME, check.pixels, batch)
    parity = measure_parity(
        reference, got[repo.OUTPUT_NAME], options.tolerance, signature=repo.SIGNATURE_PIXELS
    )
    require(parity, f"SavedModel {repo.SIGNATURE_PIXELS}")
    if embedding is not None:
        parity[repo.EMBEDDING_NAME] = measure_embedding(
            embedding, got[repo.EMBEDDING_NAME], options.tolerance
        )
        require_embedding(parity[repo.EMBEDDING_NAME], f"SavedModel {repo.SIGNATURE_PIXELS}")
    files = check.files[:32]
    if files:
        images_fn = signatures[repo.SIGNATURE_IMAGES]
        from_files = _batched(images_fn, repo.IMAGES_INPUT_NAME, [p.read_bytes() for p in files], batch)
        images_parity = measure_parity(
            reference[: len(files)], from_files[repo.OUTPUT_NAME], options.tolerance
        )
        require(images_parity, f"SavedModel {repo.SIGNATURE_IMAGES}")
        if embedding is not None:
            images_parity[repo.EMBEDDING_NAME] = measure_embedding(
                embedding[: len(files)], from_files[repo.EMBEDDING_NAME], options.tolerance
            )
            require_embedding(images_parity[repo.EMBEDDING_NAME], f"SavedModel {repo.SIGNATURE_IMAGES}")
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
    staging: Path,
    precision: str,
    opset: int,
    parity: dict[str, Any],
    session: ort.InferenceSession,
    check: LabelledImages,
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
