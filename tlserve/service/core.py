"""The transport-free inference core: every API's requests end up here.

Model lookup (name, version or label), validation against the manifest, image decoding off the event
loop, batching, the backend call and post-processing (top-k labels). No gRPC types: transports convert
their protos to these calls and map ``ServiceError.code`` to their own statuses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

import tlserve
from tlserve.service.capture import Capturer
from tlserve.service.decoding import Decoder
from tlserve.service.domain import (
    Classification,
    ModelMetadata,
    ModelRef,
    ModelStatus,
    Prediction,
    ServerMetadata,
    Unknown,
    VersionStatus,
)
from tlserve.service.errors import DeadlineExceeded, InvalidArgument, NotFound
from tlserve.service.metrics import current_model
from tlserve.service.monitor import novelty_or_none
from tlserve.service.registry import LoadedVersion, Model, ModelRegistry, VersionRecord, labelled
from tlserve.service.settings import ServerSettings

DEFAULT_TOP_K = 5
"""What the native API and ``tlserve predict`` answer when no top-k is given."""
EXTENSIONS = ("classification",)
"""The Open Inference Protocol extensions every API of this server has."""


class InferenceCore:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: ServerSettings,
        decoder: Decoder,
        capture: Capturer | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.decoder = decoder
        self.capture = capture
        """Hard-example capture (``capture_dir``), offered every answered request's images."""

    # --- inference --------------------------------------------------------------------------------
    async def infer(
        self, ref: ModelRef, inputs: np.ndarray | Sequence[bytes], deadline: float | None = None
    ) -> Prediction:
        """Probabilities for pixels [N, H, W, 3] (RGB 0..255, float32 or uint8) at the model's input
        size, or for encoded images (decoded and resized as the exported signature does)."""
        with self._lease(ref) as served:
            if isinstance(inputs, np.ndarray):
                prediction = await self._run(served, self._pixels(served, inputs), deadline)
            else:
                prediction = await self._images(served, inputs, deadline)
        if self.capture is not None:  # NOTE: on the loop's next turn, once this answer is on its way
            asyncio.get_running_loop().call_soon(self.capture.offer, prediction, inputs)
        return prediction

    async def classify(
        self, ref: ModelRef, images: Sequence[bytes], k: int | None = None, deadline: float | None = None
    ) -> Classification:
        """The ``k`` best labels per encoded image (every class when None; at most the class count),
        ``unknown`` first where the model's settings say (``unknown_rule``)."""
        if k is not None and k < 1:
            raise InvalidArgument(f"top-k must be positive; got {k}")
        prediction = await self.infer(ref, images, deadline)
        top = prediction.top(k, self.unknown_rule(prediction.name))
        return Classification(prediction.name, prediction.version, top, prediction.embedding)

    def unknown_rule(
        self, model: str, below: float | None = None, novelty_above: float | None = None
    ) -> Unknown | None:
        """The model's ``unknown_below``/``unknown_novelty_above`` settings, each replaced by a
        request's own value where given; None when both are off."""
        settings = self.settings.for_model(model)
        rule = Unknown(
            settings.unknown_below if below is None else below,
            settings.unknown_novelty_above if novelty_above is None else novelty_above,
        )
        return None if rule.below is None and rule.novelty_above is None else rule

    async def _images(
        self, served: LoadedVersion, images: Sequence[bytes], deadline: float | None
    ) -> Prediction:
        self._check_batch(len(images))
        started = time.perf_counter()
        pixels = await self.decoder.decode(images, *served.manifest.image_size, deadline)
        served.metrics.preprocess.observe(time.perf_counter() - started)
        return await self._run(served, pixels, deadline)

    @contextmanager
    def _lease(self, ref: ModelRef) -> Iterator[LoadedVersion]:
        self._label(ref)
        with self.registry.lease(ref.name, ref.version, ref.label) as served:
            current_model.set((served.name, str(served.version)))
            yield served

    async def _run(self, served: LoadedVersion, pixels: np.ndarray, deadline: float | None) -> Prediction:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the deadline passed before the request reached the model")
        outputs = await served.batcher.submit(pixels, deadline)
        novelty = None
        if served.reference is not None and outputs.embedding is not None:
            novelty = novelty_or_none(served.reference, outputs.embedding)
        served.metrics.predicted(outputs, novelty)
        return Prediction(
            served.name,
            served.version,
            outputs.probabilities,
            served.manifest.labels,
            outputs.embedding,
            novelty,
        )

    # --- validation -------------------------------------------------------------------------------
    def _check_batch(self, size: int) -> None:
        if size == 0:
            raise InvalidArgument("empty batch: send at least one image")
        check_batch_size(size, self.settings.max_batch_size)

    def _pixels(self, served: LoadedVersion, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` checked, as the float32 the model takes (uint8 converted: a quarter of the
        bytes on the wire, one conversion here)."""
        height, width = served.manifest.image_size
        if pixels.dtype not in (np.float32, np.uint8):
            raise InvalidArgument(f"pixels must be float32 or uint8; got {pixels.dtype}")
        if pixels.ndim != 4 or pixels.shape[1:] != (height, width, 3):
            raise InvalidArgument(
                f"pixels must have shape [N, {height}, {width}, 3] (RGB 0..255); got {list(pixels.shape)}"
            )
        self._check_batch(pixels.shape[0])
        if pixels.dtype == np.uint8:
            return pixels.astype(np.float32)
        if not np.isfinite(pixels).all():
            raise InvalidArgument("pixels must be finite; got NaN or Inf")
        return pixels

    # --- model information ------------------------------------------------------------------------
    def status(self, ref: ModelRef) -> ModelStatus:
        """A model's versions in any state: all of them, or the one ``ref`` names by number or label."""
        model = self._model(ref)
        status = model_status(model)
        if not status.versions:  # NOTE: as TF Serving answers for a model folder with no version
            raise NotFound(f"model {ref.name!r} has no versions (none on disk in its folder)")
        if ref.version is None and ref.label is None:
            return status
        number = labelled(model, ref.label) if ref.label else ref.version
        versions = tuple(v for v in status.versions if v.version == number)
        if not versions:
            known = ", ".join(str(v.version) for v in status.versions) or "none"
            raise NotFound(f"model {ref.name!r} has no version {number} (versions: {known})")
        return ModelStatus(status.name, versions, status.serving)

    def models(self) -> list[ModelStatus]:
        return [model_status(self.registry.models[name]) for name in sorted(self.registry.models)]

    def metadata(self, ref: ModelRef) -> ModelMetadata:
        """The interface of the serving version ``ref`` asks for."""
        served = self._resolve(ref)
        serving = tuple(sorted(self.registry.model(served.name).serving))
        manifest = served.manifest
        return ModelMetadata(
            served.name, served.version, serving, served.backend.name, tuple(manifest.labels),
            manifest.image_size, manifest.embedding_size,
        )  # fmt: skip

    def ready(self, ref: ModelRef | None = None) -> bool:
        """The server's readiness (first scan done, a model serving), or whether ``ref`` would be
        answered now: an unknown model or version is not ready rather than an error."""
        if ref is None:
            return self.registry.ready
        model = self.registry.models.get(ref.name)
        if model is None:
            return False
        if ref.label:
            return model.settings.version_labels.get(ref.label) in model.serving
        return bool(model.serving) if ref.version is None else ref.version in model.serving

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("tlserve", tlserve.__version__, EXTENSIONS)

    # --- lookup -----------------------------------------------------------------------------------
    def _model(self, ref: ModelRef) -> Model:
        self._label(ref)
        return self.registry.model(ref.name)

    def _resolve(self, ref: ModelRef) -> LoadedVersion:
        self._label(ref)
        served = self.registry.resolve(ref.name, ref.version, ref.label)
        current_model.set((served.name, str(served.version)))
        return served

    def _label(self, ref: ModelRef) -> None:
        """Label the call's metrics with the model as soon as it is known to exist (unknown names
        stay unlabelled, which keeps the label's cardinality bounded)."""
        if ref.name in self.registry.models:
            current_model.set((ref.name, ""))


def model_status(model: Model) -> ModelStatus:
    versions = tuple(version_status(model.versions[n]) for n in sorted(model.versions))
    return ModelStatus(model.name, versions, tuple(sorted(model.serving)))


def version_status(record: VersionRecord) -> VersionStatus:
    status = VersionStatus(record.version, record.state, record.error)
    if record.manifest is not None:
        manifest = record.manifest
        base = str(manifest.base.get("name") or "a network trained before")
        status = replace(status, labels=tuple(manifest.labels), image_size=manifest.image_size, base=base,
                         exported_as=manifest.exported_as)  # fmt: skip
    if record.loaded is not None:
        backend = record.loaded.backend
        status = replace(status, backend=backend.name, providers=tuple(backend.providers),
                         artifact=backend.artifact)  # fmt: skip
    return status


def check_batch_size(size: int, maximum: int) -> None:
    """InvalidArgument for more than ``maximum`` images (transports check a count they can read
    cheaply with this before converting the images or tensors of a request)."""
    if size > maximum:
        raise InvalidArgument(
            f"batch of {size} images is above the maximum of {maximum} (setting max_batch_size); split it"
        )
