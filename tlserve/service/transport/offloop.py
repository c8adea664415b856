"""Parsing that would hold the event loop for seconds (a large JSON body, a protobuf message of
millions of tiny fields) runs on a small pool of its own: hostile requests then queue behind each
other, not behind model loads and unloads (the loop's default executor), and never stop the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
THREADS = 2
"""At most this many large requests are parsed at once; more wait their turn."""
POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="tlserve-parse")
"""Threads start on first use (most servers never see a request this large)."""


async def off_loop(large: bool, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``: inline when it is cheap, else in a parse thread, so that the event loop
    runs on (for code that lets go of the GIL now and then: Python loops, callbacks)."""
    if not large:
        return function(*args)
    return await asyncio.get_running_loop().run_in_executor(POOL, function, *args)
