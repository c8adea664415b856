"""The wait estimate that the batcher and the decoder admit requests by.

Both keep the recent time of one unit of their work (a backend call, one request's decode) and
refuse a request at once with RESOURCE_EXHAUSTED when the work queued ahead of it would not fit in
its remaining deadline: a short deadline behind a long queue is told so immediately, rather than
left to expire in the queue after costing compute.
"""

from __future__ import annotations

import time

DEADLINE_MARGIN = 0.9
"""Admit a request only if its estimated wait fits in this share of its remaining deadline (what is
left covers the estimate's own error, the answer's way back and the client's scheduling)."""
WEIGHT = 0.2
"""How much the newest measurement counts in the recent time."""


class RecentTime:
    """An exponentially weighted average of a duration; None until the first measurement."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    def add(self, seconds: float) -> None:
        self.seconds = seconds if self.seconds is None else (1 - WEIGHT) * self.seconds + WEIGHT * seconds


def too_late(wait_s: float, deadline: float | None) -> float | None:
    """The seconds left to ``deadline`` (a ``time.monotonic()`` value) when a wait of ``wait_s``
    does not fit in its margin, else None (no deadline: never too late)."""
    if deadline is None or not wait_s:
        return None
    remaining = deadline - time.monotonic()
    return max(remaining, 0.0) if wait_s > DEADLINE_MARGIN * remaining else None
