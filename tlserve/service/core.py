"""The transport-free inference core: every API's requests end up here.

Model lookup (name, version or label), validation against the manifest, image decoding off the event
loop, batching, the backend call and post-processing (top-k labels). No gRPC types: transports convert
their protos to these calls and map ``ServiceError.code`` to their own statuses.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from tlserve.service.batching import DEADLINE_MARGIN
from tlserve.service.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from tlserve.service.images import decode_batch
from tlserve.service.metrics import current_model
from tlserve.service.settings import ServerSettings
from tlserve.service.watcher import Model, Repository, ServedVersion

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class ModelRef:
    """Which model a request asks for; ``version`` and ``label`` are optional (newest by default)."""

    name: str
    version: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class Prediction:
    name: str
    version: int
    probabilities: np.ndarray
    """float32 [N, classes]."""


@dataclass(frozen=True)
class LabelScore:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Classification:
    name: str
    version: int
    top: list[list[LabelScore]]
    """One list per image, best first."""


class InferenceCore:
    def __init__(self, repository: Repository, settings: ServerSettings, decoder: ThreadPoolExecutor) -> None:
        self.repository = repository
        self.settings = settings
        self._decoder = decoder
        self._decoding = 0
        """Requests whose images are being decoded or wait for a decode thread."""
        self._decode_threads = settings.decode_threads or os.cpu_count() or 1
        self._decode_s: float | None = None
        """Recent time to decode one request's images (an exponentially weighted average)."""

    # --- inference --------------------------------------------------------------------------------
    async def predict(self, ref: ModelRef, pixels: np.ndarray, deadline: float | None = None) -> Prediction:
        """Probabilities for float32 pixels [N, H, W, 3] (RGB 0..255) at the model's input size."""
        with self._lease(ref) as served:
            self._check_pixels(served, pixels)
            return await self._run(served, pixels, deadline)

    async def predict_images(
        self, ref: ModelRef, images: Sequence[bytes], deadline: float | None = None
    ) -> Prediction:
        """Probabilities for encoded images, decoded and resized as the exported signature does."""
        with self._lease(ref) as served:
            return await self._images(served, images, deadline)

    async def classify(
        self, ref: ModelRef, images: Sequence[bytes], top_k: int = 0, deadline: float | None = None
    ) -> Classification:
        """Top-k labels per encoded image; ``top_k`` 0 means DEFAULT_TOP_K, capped at the class count."""
        if top_k < 0:
            raise InvalidArgument(f"top_k must be 0 (default {DEFAULT_TOP_K}) or positive; got {top_k}")
        with self._lease(ref) as served:
            prediction = await self._images(served, images, deadline)
            assert served.manifest is not None
            top = top_labels(prediction.probabilities, served.manifest.labels, top_k or DEFAULT_TOP_K)
            return Classification(served.name, served.version, top)

    async def _images(
        self, served: ServedVersion, images: Sequence[bytes], deadline: float | None
    ) -> Prediction:
        self._check_batch(len(images))
        assert served.manifest is not None
        height, width = served.manifest.image_size
        if self._decoding >= self.settings.max_queue_size:  # NOTE: admission, as the batcher's queue
            raise ResourceExhausted(
                f"{self._decoding} requests are already decoding images (setting max_queue_size); retry later"
            )
        wait = decode_wait(self._decoding, self._decode_threads, self._decode_s)
        if deadline is not None and wait:  # NOTE: as the batcher's estimate
            remaining = deadline - time.monotonic()
            if wait > DEADLINE_MARGIN * remaining:
                raise ResourceExhausted(
                    f"{self._decoding} requests waiting to decode need about {wait * 1000:.0f} ms, more than "
                    f"this request's remaining deadline of {max(remaining, 0) * 1000:.0f} ms; retry later"
                )
        started = time.perf_counter()
        self._decoding += 1
        settings = self.settings

        def timed() -> tuple[np.ndarray, float]:  # NOTE: the decode alone, without the wait for a thread
            begin = time.perf_counter()
            out = decode_batch(images, height, width, settings.allowed_image_formats,
                               settings.max_image_pixels, deadline, settings.max_image_bytes,
                               settings.max_request_pixels, settings.jpeg_draft,
                               settings.max_jpeg_scans, settings.max_gif_frames)  # fmt: skip
            return out, time.perf_counter() - begin

        loop = asyncio.get_running_loop()
        job = self._decoder.submit(timed)
        # NOTE: the count drops when the thread is done, not when the caller gives up: a cancelled
        # call's decode that already started still holds its thread
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._decoded))
        pixels, decoding = await asyncio.wrap_future(job)
        self._decode_s = decoding if self._decode_s is None else 0.8 * self._decode_s + 0.2 * decoding
        if served.metrics is not None:
            served.metrics.preprocess.observe(time.perf_counter() - started)
        return await self._run(served, pixels, deadline)

    def _decoded(self) -> None:
        self._decoding -= 1

    @contextmanager
    def _lease(self, ref: ModelRef) -> Iterator[ServedVersion]:
        self._label(ref)
        with self.repository.lease(ref.name, ref.version, ref.label) as served:
            current_model.set((served.name, str(served.version)))
            yield served

    async def _run(self, served: ServedVersion, pixels: np.ndarray, deadline: float | None) -> Prediction:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the deadline passed before the request reached the model")
        assert served.batcher is not None
        probabilities = await served.batcher.submit(pixels, deadline)
        return Prediction(served.name, served.version, probabilities)

    # --- validation -------------------------------------------------------------------------------
    def _check_batch(self, size: int) -> None:
        if size == 0:
            raise InvalidArgument("empty batch: send at least one image")
        check_batch_size(size, self.settings.max_batch_size)

    def _check_pixels(self, served: ServedVersion, pixels: np.ndarray) -> None:
        assert served.manifest is not None
        height, width = served.manifest.image_size
        if pixels.dtype != np.float32:
            raise InvalidArgument(f"pixels must be float32; got {pixels.dtype}")
        if pixels.ndim != 4 or pixels.shape[1:] != (height, width, 3):
            raise InvalidArgument(
                f"pixels must have shape [N, {height}, {width}, 3] (RGB 0..255); got {list(pixels.shape)}"
            )
        self._check_batch(pixels.shape[0])
        if not np.isfinite(pixels).all():
            raise InvalidArgument("pixels must be finite; got NaN or Inf")

    # --- model information ------------------------------------------------------------------------
    def models(self) -> list[Model]:
        return [self.repository.models[name] for name in sorted(self.repository.models)]

    def model(self, name: str) -> Model:
        return self.repository.model(name)

    def resolve(self, ref: ModelRef) -> ServedVersion:
        self._label(ref)
        served = self.repository.resolve(ref.name, ref.version, ref.label)
        current_model.set((served.name, str(served.version)))
        return served

    def _label(self, ref: ModelRef) -> None:
        """Label the call's metrics with the model as soon as it is known to exist (unknown names
        stay unlabelled, which keeps the label's cardinality bounded)."""
        if ref.name in self.repository.models:
            current_model.set((ref.name, ""))


def check_batch_size(size: int, maximum: int) -> None:
    """InvalidArgument for more than ``maximum`` images (transports check a count they can read
    cheaply with this before converting the images or tensors of a request)."""
    if size > maximum:
        raise InvalidArgument(
            f"batch of {size} images is above the maximum of {maximum} (setting max_batch_size); split it"
        )


def decode_wait(decoding: int, threads: int, per_request_s: float | None) -> float:
    """Lower-bound wait for a decode thread plus the decode itself, in seconds; 0 while a thread is
    free (so a few slow requests can never lock out short deadlines on an idle server)."""
    if per_request_s is None or decoding < threads:
        return 0.0
    return ((decoding - threads) // threads + 2) * per_request_s


def top_labels(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[list[LabelScore]]:
    k = min(k, len(labels))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [LabelScore(labels[i], int(i), float(row[i])) for i in idx]
        for row, idx in zip(probabilities, order, strict=True)
    ]
