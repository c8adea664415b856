"""The interface every inference backend implements (see the package's docstring)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlserve.repository import Manifest
from tlserve.service.settings import ModelSettings, ServerSettings


@dataclass(frozen=True)
class Outputs:
    """Both outputs of one run over a batch; sliced by rows (``outputs[a:b]``) to hand each request
    of a batch its own."""

    probabilities: np.ndarray
    """float32 [N, classes]."""
    embedding: np.ndarray | None = None
    """float32 [N, D], the pooled features (``repository.EMBEDDING_NAME``); None for a version
    exported without that output."""

    def __getitem__(self, rows: slice) -> Outputs:
        embedding = None if self.embedding is None else self.embedding[rows]
        return Outputs(self.probabilities[rows], embedding)

    def __len__(self) -> int:
        return len(self.probabilities)


class Backend(ABC):
    name: str
    """"onnxruntime" or "tensorflow"."""
    providers: list[str]
    """The devices/providers the runtime really uses, best first (after load)."""
    artifact: str
    """The main file served, relative to the version dir (after load)."""

    def __init__(self, version_dir: Path, manifest: Manifest, settings: ServerSettings, model: ModelSettings):
        self.version_dir = version_dir
        self.manifest = manifest
        self.settings = settings
        self.model = model
        self.providers = []
        self.artifact = ""

    @abstractmethod
    def load(self) -> None:
        """Load the artifact; raise with a message that says what went wrong."""

    @abstractmethod
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [N, H, W, 3] pixels 0..255 -> float32 [N, classes] probabilities."""

    def outputs(self, pixels: np.ndarray) -> Outputs:
        """Every output of one run: what the batcher calls (``predict`` serves the warm-up)."""
        return Outputs(self.predict(pixels))

    @abstractmethod
    def unload(self) -> None:
        """Release the runtime's memory; called once, after the last predict."""
