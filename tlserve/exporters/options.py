"""What ``tlserve export`` is asked to do: one typed object, filled by the CLI and checked by
``export.check_options`` before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["FORMATS", "ExportOptions"]

FORMATS = ("savedmodel", "onnx")


@dataclass
class ExportOptions:
    run_dir: Path
    repository: Path
    name: str
    version: int | None = None
    formats: tuple[str, ...] = FORMATS
    fp16: bool = False
    int8: bool = False
    calibration_data: Path | None = None
    opset: int = 17
    parity_images: int = 32
    """At least this many images for every parity check (validation images, topped up at random)."""
    validation_limit: int = 1000
    calibration_limit: int = 200
    tolerance: float = 1e-4
    """fp32 ONNX: max abs difference of probabilities allowed against Keras."""
    fp16_tolerance: float = 5e-2
    int8_max_drop_points: float = 1.0
    allow_weak: bool = False
    """Publish a run even when its validation accuracy is not clearly above chance or its predictions
    are constant (see ``tlserve.training.quality``); the export then warns instead of refusing."""
    allow_duplicate: bool = False
    """Publish a run even when a version of the model already holds the same weights, labels and
    artifacts (every server would swap to an identical version)."""
