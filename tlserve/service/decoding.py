"""The decoder: encoded images become pixels in a thread pool, beside the batchers.

Requests that send encoded images are decoded on ``decode_threads`` threads (not on the event
loop), each request's images in one job. Admission works as the batcher's does
(tlserve.service.waits): more than ``max_decode_queue`` requests decoding or waiting for a thread
are refused at once with RESOURCE_EXHAUSTED, and so is a request whose wait for a free thread, at
the recent time per request, would not fit in its deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tlserve.service.errors import ResourceExhausted
from tlserve.service.images import configure_pillow, decode_batch
from tlserve.service.settings import ServerSettings
from tlserve.service.waits import RecentTime, too_late


class Decoder:
    def __init__(self, settings: ServerSettings) -> None:
        """Its ``decode_threads`` threads (0: one per CPU) start on first use; Pillow's own bomb check
        is set to the server's limit (``configure_pillow``: process-wide, so once, here)."""
        self.settings = settings
        self.threads = settings.decode_threads or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="tlserve-decode")
        configure_pillow(settings.max_image_pixels)
        self.pending = 0
        """Requests whose images are being decoded or wait for a decode thread."""
        self.recent = RecentTime()
        """The decode of one request's images, without its wait for a thread."""

    async def decode(
        self, images: Sequence[bytes], height: int, width: int, deadline: float | None = None
    ) -> np.ndarray:
        """float32 [N, height, width, 3], RGB 0..255; InvalidArgument names the first bad image."""
        if self.pending >= self.settings.max_decode_queue:
            raise ResourceExhausted(
                f"{self.pending} requests are already decoding images (setting max_decode_queue); retry later"
            )
        if (remaining := too_late(self.wait_s(), deadline)) is not None:
            raise ResourceExhausted(
                f"{self.pending} requests waiting to decode need about {self.wait_s() * 1000:.0f} ms, more "
                f"than this request's remaining deadline of {remaining * 1000:.0f} ms; retry later"
            )
        settings = self.settings

        def timed() -> tuple[np.ndarray, float]:
            begin = time.perf_counter()
            out = decode_batch(images, height, width, settings.allowed_image_formats,
                               settings.max_image_pixels, deadline, settings.max_image_bytes,
                               settings.max_request_pixels, settings.jpeg_draft,
                               settings.max_jpeg_scans, settings.max_gif_frames)  # fmt: skip
            return out, time.perf_counter() - begin

        loop = asyncio.get_running_loop()
        self.pending += 1
        job = self._executor.submit(timed)
        # NOTE: the count drops when the thread is done, not when the caller gives up: a cancelled
        # call's decode that already started still holds its thread
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._done))
        pixels, took = await asyncio.wrap_future(job)
        self.recent.add(took)
        return pixels

    def _done(self) -> None:
        self.pending -= 1

    def close(self) -> None:
        """Stop the threads once their decodes are done (callers that gave up leave them running)."""
        self._executor.shutdown(wait=False)

    def wait_s(self) -> float:
        """Lower-bound wait for a decode thread plus the decode itself, in seconds; 0 while a thread
        is free (so a few slow requests can never lock out short deadlines on an idle server)."""
        return decode_wait(self.pending, self.threads, self.recent.seconds)


def decode_wait(decoding: int, threads: int, per_request_s: float | None) -> float:
    if per_request_s is None or decoding < threads:
        return 0.0
    return ((decoding - threads) // threads + 2) * per_request_s
