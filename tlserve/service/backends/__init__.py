"""Inference backends: one small interface, one module per runtime.

A backend serves one model version. The registry calls ``load()`` once (in a worker thread), then
``predict()`` any number of times from the batcher's thread, then ``unload()`` once no request uses
it. Implement those three and the descriptive attributes to add a runtime.
"""

from __future__ import annotations

from pathlib import Path

from tlserve.repository import Manifest
from tlserve.service.backends.base import Backend
from tlserve.service.settings import ModelSettings, ServerSettings

__all__ = ["Backend", "create_backend"]


def create_backend(
    version_dir: Path, manifest: Manifest, settings: ServerSettings, model: ModelSettings
) -> Backend:
    if model.backend == "tensorflow":
        from tlserve.service.backends.tensorflow import TensorFlowBackend

        return TensorFlowBackend(version_dir, manifest, settings, model)
    from tlserve.service.backends.onnx import OnnxBackend

    return OnnxBackend(version_dir, manifest, settings, model)
