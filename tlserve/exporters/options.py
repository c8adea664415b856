"""What ``tlserve export`` is asked to do: one typed object, filled by the CLI and checked by
``export.check_options`` before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlserve.storage import Remote, location

__all__ = ["FORMATS", "TOLERANCE", "ExportOptions", "check_batch"]

FORMATS = ("savedmodel", "onnx")
TOLERANCE = 1e-4
"""fp32 ONNX and the SavedModel: the max abs difference of probabilities allowed against Keras."""
CHECK_PIXELS = 32 * 224 * 224
"""Pixels per batch of a parity or accuracy check: 32 images at 224 px, fewer at larger sizes."""


def check_batch(size: int) -> int:
    """Images per batch when the exporter runs a model over its check images at ``size`` px.

    NOTE: Keras' predict of EfficientNetB5 at 456 px peaked at 3.7 GB in batches of 32, 2.0 GB in
    batches of 7."""
    return max(1, min(32, CHECK_PIXELS // (size * size)))


@dataclass
class ExportOptions:
    run_dir: Path
    repository: Path | Remote
    """A directory, or a bucket (``tlserve.storage.location`` of a URL; a string is read so)."""
    name: str
    version: int | None = None
    formats: tuple[str, ...] = FORMATS
    fp16: bool = False
    int8: bool = False
    calibration_data: Path | None = None
    """int8 quantization ranges are measured on these images (default: the run's training images)."""
    calibrate: bool = True
    """Fit temperature scaling on the validation images and serve the calibrated scores
    (``tlserve.exporters.calibration``); False serves the raw softmax."""
    opset: int = 17
    parity_images: int = 32
    """At least this many images for every parity check (validation images, topped up at random)."""
    validation_limit: int = 1000
    calibration_limit: int = 200
    reference_limit: int = 1000
    """At most this many training images (a seeded sample) give the reference statistics' centroids."""
    tolerance: float = TOLERANCE
    fp16_tolerance: float = 5e-2
    int8_max_drop_points: float = 1.0
    allow_weak: bool = False
    """Publish a run even when its validation accuracy is not clearly above chance or its predictions
    are constant (see ``tlserve.training.quality``); the export then warns instead of refusing."""
    allow_duplicate: bool = False
    """Publish a run even when a version of the model already holds the same weights, labels and
    artifacts (every server would swap to an identical version)."""

    def __post_init__(self) -> None:
        if isinstance(self.repository, str):  # NOTE: from Python callers; the CLI passes location()'s
            self.repository = location(self.repository)
