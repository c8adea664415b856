"""Dynamic batching: requests for one model version share backend calls.

Each request gets a future. One worker task takes the oldest request, then collects more until the
batch holds ``max_batch_size`` images (setting ``dynamic_batch_size``; a larger request runs alone)
or ``max_batch_delay_s`` has passed, runs the backend once in a
worker thread, and hands every request its rows. While the backend computes, new requests queue up and
form the next batch, so under load batches grow by themselves. If the backend fails, every request of
that batch fails with the same error.

- A full queue (``max_queue_size`` requests waiting) rejects new requests at once with
  RESOURCE_EXHAUSTED: under overload a client learns immediately instead of timing out.
- So does a request whose deadline would pass before its answer could come (the batches queued
  ahead, its own and the one computing, at the recent time per batch): a short deadline behind a
  long queue is refused at once, rather than left to expire in it after costing compute.
- Requests whose deadline has passed, or whose caller gave up (cancelled future), are dropped before
  compute and never take a batch slot.
- ``enabled=False`` (setting ``batching``) runs each request as its own batch, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from tlserve.service.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from tlserve.service.waits import RecentTime, too_late


class BatchObserver(Protocol):
    """What the batcher reports (tlserve.service.metrics.VersionMetrics implements it)."""

    def waited(self, seconds: float) -> None: ...
    def computed(self, size: int, seconds: float) -> None: ...
    def queued(self, depth: int) -> None: ...


@dataclass
class _Request:
    pixels: np.ndarray
    deadline: float | None
    future: asyncio.Future[Any] = field(repr=False)
    waiting: bool = True
    submitted: float = field(default_factory=time.monotonic)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class Rows(Protocol):
    def __getitem__(self, rows: slice, /) -> Any: ...


Result = TypeVar("Result", bound=Rows)
"""What the backend returns for a batch, sliced by rows for each request (``backends.base.Outputs``,
or an array)."""


class Batcher(Generic[Result]):
    def __init__(
        self,
        predict: Callable[[np.ndarray], Result],
        executor: Executor,
        *,
        enabled: bool,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue_size: int,
        observer: BatchObserver | None = None,
    ) -> None:
        self._predict = predict
        self._executor = executor
        self.enabled = enabled
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue_size = max_queue_size
        self._observer = observer
        self._queue: deque[_Request] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._busy = False
        """True from taking a batch's first request until its results are handed out."""
        self._computing: list[asyncio.Future[np.ndarray]] = []
        """The futures of the batch being collected or computed."""
        self._call: asyncio.Future[Result] | None = None
        """The backend call running now (it may outlive every request of its batch)."""
        self._pending = 0
        """Requests waiting for the worker (abandoned ones stop counting at once)."""
        self._pending_rows = 0
        self._batch = RecentTime()
        """Recent time of one backend call."""

    @property
    def pending(self) -> int:
        return self._pending

    def _leave(self, request: _Request) -> None:
        if request.waiting:
            request.waiting = False
            self._pending -= 1
            self._pending_rows -= len(request.pixels)
            if self._observer is not None:
                self._observer.queued(self._pending)

    async def submit(self, pixels: np.ndarray, deadline: float | None = None) -> Result:
        """The backend's outputs for ``pixels`` [N, H, W, 3], N <= max_batch_size, as their rows of
        the batch they ran in; ``deadline`` is a ``time.monotonic()`` value."""
        if self._closed:
            raise Unavailable("this model version is being unloaded; retry")
        if self._pending >= self.max_queue_size:
            raise ResourceExhausted(
                f"the queue of this model is full ({self.max_queue_size} requests waiting); retry later"
            )
        if self._batch.seconds is not None and (self._pending or self._busy):
            # NOTE: the batches queued ahead, this request's own and the one computing now: under
            # sustained overload the queue settles where this estimate meets the deadlines, so an
            # estimate that left any of them out would admit requests bound to expire
            wait = (self._batches_ahead(len(pixels)) + self._busy) * self._batch.seconds
            if (remaining := too_late(wait, deadline)) is not None:
                raise ResourceExhausted(
                    f"{self._pending} requests queued ahead: this one would take about {wait * 1000:.0f} ms, "
                    f"more than its remaining deadline of {remaining * 1000:.0f} ms; retry later"
                )
        if self._worker is None:  # NOTE: asyncio primitives are made inside the running loop
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        request = _Request(pixels, deadline, asyncio.get_running_loop().create_future())
        self._pending += 1
        self._pending_rows += len(pixels)
        if self._observer is not None:
            self._observer.queued(self._pending)
        request.future.add_done_callback(lambda _: self._leave(request))
        self._queue.append(request)
        assert self._wakeup is not None
        self._wakeup.set()
        return await request.future

    def _batches_ahead(self, rows: int) -> int:
        """Backend calls until a request of ``rows`` is answered, packing the queue as ``_collect``
        does (a batch closes when the next request does not fit), its own call included."""
        if not self.enabled:
            return self._pending + 1
        batches, filled = 0, self.max_batch_size
        sizes = [len(r.pixels) for r in self._queue if r.waiting and not r.future.done()]
        for size in [*sizes, rows]:
            if filled + size > self.max_batch_size and filled:
                batches, filled = batches + 1, 0
            filled += size
        return batches

    def _take(self, now: float) -> _Request | None:
        """The oldest live request, failing expired ones and skipping abandoned ones on the way."""
        while self._queue:
            request = self._queue.popleft()
            self._leave(request)
            if request.future.done():
                continue
            if request.expired(now):
                request.future.set_exception(
                    DeadlineExceeded("the deadline passed while the request was queued")
                )
                continue
            return request
        return None

    async def _collect(self) -> list[_Request]:
        assert self._wakeup is not None
        while True:
            first = self._take(time.monotonic())
            if first is not None:
                self._busy = True
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        batch, rows = [first], len(first.pixels)
        self._computing = [first.future]
        if not self.enabled:
            return batch
        until = time.monotonic() + self.max_batch_delay_s
        while rows < self.max_batch_size:
            if self._queue:
                if rows + len(self._queue[0].pixels) > self.max_batch_size:
                    break
                request = self._take(time.monotonic())
                if request is not None:
                    batch.append(request)
                    self._computing.append(request.future)
                    rows += len(request.pixels)
                continue
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            try:
                pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([r.pixels for r in batch])
                if self._observer is not None:  # NOTE: a request waits until its batch starts
                    now = time.monotonic()
                    for request in batch:
                        self._observer.waited(now - request.submitted)
                started = time.perf_counter()
                self._call = loop.run_in_executor(self._executor, self._predict, pixels)
                result = await self._call
                took = time.perf_counter() - started
                self._batch.add(took)
                if self._observer is not None:
                    self._observer.computed(len(pixels), took)
                start = 0
                for request in batch:
                    end = start + len(request.pixels)
                    if not request.future.done():
                        request.future.set_result(result[start:end])
                    start = end
            except Exception as exc:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
            finally:
                self._busy = False
                self._computing = []
                self._call = None

    async def close(self) -> None:
        """Refuse new requests, let queued ones finish, stop the worker."""
        self._closed = True
        waiting = [*self._computing, *(r.future for r in self._queue)]
        if waiting:  # NOTE: no new ones join (closed); each is answered, failed or abandoned
            await asyncio.wait(waiting)
        if self._call is not None:  # NOTE: its requests may all have given up; the backend has not
            await asyncio.wait([self._call])
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
