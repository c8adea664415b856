"""What the serving core answers, as plain types: every API's transport converts these to its wire.

No gRPC, HTTP or registry types here, so that a transport needs nothing but this module and the core.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tlserve import repository as repo


class State(enum.Enum):
    """Where one version of a model is in its life on this server."""

    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ModelRef:
    """Which model a request asks for; ``version`` and ``label`` are optional (newest by default)."""

    name: str
    version: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class LabelScore:
    label: str
    index: int
    score: float


UNKNOWN = "unknown"
"""The label answered first for an image the model should not be trusted on (``Unknown``)."""
UNKNOWN_INDEX = -1


@dataclass(frozen=True)
class Unknown:
    """When to answer ``unknown``: a top score below ``below``, or a novelty above ``novelty_above``
    (None: that test is off)."""

    below: float | None = None
    novelty_above: float | None = None

    def applies(self, top_scores: np.ndarray, novelty: np.ndarray | None) -> np.ndarray:
        """[N] bool: which images are answered ``unknown``."""
        hit = np.zeros(len(top_scores), bool)
        if self.below is not None:
            hit |= top_scores < self.below
        if self.novelty_above is not None and novelty is not None:
            hit |= novelty > self.novelty_above
        return hit


@dataclass(frozen=True)
class Prediction:
    """The answer of one version to one request, with the labels of its classes."""

    name: str
    version: int
    probabilities: np.ndarray
    """float32 [N, classes]."""
    labels: Sequence[str]
    embedding: np.ndarray | None = None
    """float32 [N, D]: the pooled features the model's head read (None for a version without them)."""
    novelty: np.ndarray | None = None
    """[N]: each image's novelty (``tlserve.service.monitor``); None without reference statistics."""

    def top(self, k: int | None = None, unknown: Unknown | None = None) -> list[list[LabelScore]]:
        """Per image, the ``k`` best labels (all when None, at most the class count), best first;
        with ``unknown``, an image it applies to gets ``unknown`` (score 1 - its top score, first
        whatever its score) and then its best labels, still ``k`` in all (every class when None)."""
        count = len(self.labels) if k is None else min(k, len(self.labels))
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :count]
        rows = [
            [LabelScore(self.labels[i], int(i), float(row[i])) for i in idx]
            for row, idx in zip(self.probabilities, order, strict=True)
        ]
        if unknown is None:
            return rows
        hits = unknown.applies(self.probabilities.max(axis=1), self.novelty)
        return [
            [
                LabelScore(UNKNOWN, UNKNOWN_INDEX, 1.0 - row[0].score),
                *(row if k is None else row[: count - 1]),
            ]
            if hit
            else row
            for row, hit in zip(rows, hits.tolist(), strict=True)
        ]


@dataclass(frozen=True)
class Classification:
    name: str
    version: int
    top: list[list[LabelScore]]
    """One list per image, best first."""
    embedding: np.ndarray | None = None
    """float32 [N, D], as ``Prediction.embedding``."""


@dataclass(frozen=True)
class Tensor:
    """An input or output of every served model, in the Open Inference Protocol's terms."""

    name: str
    datatype: str
    """"FP32" or "BYTES"."""
    shape: tuple[int, ...]
    """-1 for a dimension of any size."""


@dataclass(frozen=True)
class VersionStatus:
    """One version this server has seen, in any state; the details are empty until it has loaded."""

    version: int
    state: State
    error: str = ""
    """Why it failed to load (FAILED only); never an absolute server path."""
    labels: tuple[str, ...] = ()
    image_size: tuple[int, int] = (0, 0)
    base: str = ""
    """The base network it was trained from."""
    backend: str = ""
    providers: tuple[str, ...] = ()
    artifact: str = ""
    exported_as: str = ""
    """The model/version its manifest says it was exported as (differs for a copied folder)."""

    @property
    def ready(self) -> bool:
        return self.state is State.AVAILABLE


@dataclass(frozen=True)
class ModelStatus:
    name: str
    versions: tuple[VersionStatus, ...]
    """By version number."""
    serving: tuple[int, ...]
    """The versions that answer requests, ascending."""


@dataclass(frozen=True)
class ModelMetadata:
    """A serving version's interface: both inputs (pixels, or encoded images) and the output."""

    name: str
    version: int
    serving: tuple[int, ...]
    """Every version of the model that answers requests, ascending."""
    backend: str
    labels: tuple[str, ...]
    image_size: tuple[int, int]
    embedding_size: int | None = None
    """D of the ``embedding`` output; None for a version exported without it."""

    @property
    def inputs(self) -> tuple[Tensor, Tensor]:
        height, width = self.image_size
        return (
            Tensor(repo.INPUT_NAME, "FP32", (-1, height, width, 3)),
            Tensor(repo.IMAGES_INPUT_NAME, "BYTES", (-1,)),
        )

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        probabilities = Tensor(repo.OUTPUT_NAME, "FP32", (-1, len(self.labels)))
        if self.embedding_size is None:
            return (probabilities,)
        return probabilities, Tensor(repo.EMBEDDING_NAME, "FP32", (-1, self.embedding_size))


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]
