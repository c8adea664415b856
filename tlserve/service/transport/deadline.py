"""The client's gRPC deadline as a ``time.monotonic()`` value for the core."""

from __future__ import annotations

import time
from typing import Any

from grpc import aio


def deadline_of(context: aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
