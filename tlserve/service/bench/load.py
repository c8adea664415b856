"""The load generator: a closed loop (N clients back to back) or an open loop (a fixed rate), asyncio.

``call`` sends one request and returns "OK" or the error's code name; it is the only thing that
differs between the server and the in-process baseline, so both are measured the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from tlserve.service.bench.stats import OK, Records

Call = Callable[[], Awaitable[str]]
TTY_INTERVAL_S = 0.5
LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Load:
    concurrency: int | None
    """Closed loop: clients, each sending its next request when the last one is answered."""
    rate: float | None
    """Open loop: requests per second on a fixed schedule, answered or not. Exactly one is set."""
    warmup_s: float
    duration_s: float
    max_requests: int
    """Measured requests at most: the run stops at this count or after ``duration_s``, the first."""


@dataclass(frozen=True)
class Plan:
    start: float
    measured_from: float
    end: float


class Runner:
    """One load run: ``await Runner(call, load).run()`` fills ``records``; ``plan`` says what counts."""

    plan: Plan

    def __init__(self, call: Call, load: Load, label: str = "", progress: TextIO | None = None) -> None:
        self.call = call
        self.load = load
        self.label = label
        self.progress = progress
        """Where the progress line goes (rewritten in place on a terminal); None: no progress."""
        self.records = Records()
        self.measured_sent = self.measured_done = self.measured_failed = 0

    async def run(self) -> Records:
        now = time.perf_counter()
        self.plan = Plan(now, now + self.load.warmup_s, now + self.load.warmup_s + self.load.duration_s)
        ticker = asyncio.create_task(self._show_progress()) if self.progress is not None else None
        try:
            if self.load.rate is not None:
                await self._open_loop(self.load.rate)
            else:
                assert self.load.concurrency is not None
                await asyncio.gather(*(self._client() for _ in range(self.load.concurrency)))
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        return self.records

    def _may_send(self, due: float) -> bool:
        """Count a request due at ``due`` against the budget; False once the run is over."""
        if due >= self.plan.end or self.measured_sent >= self.load.max_requests:
            return False
        if due >= self.plan.measured_from:
            self.measured_sent += 1
        return True

    async def _send(self, due: float, sent: float | None = None) -> None:
        sent = time.perf_counter() if sent is None else sent
        code = await self.call()
        self.records.add(due, sent, time.perf_counter(), code)
        if due >= self.plan.measured_from:
            self.measured_done += 1
            self.measured_failed += code != OK

    async def _client(self) -> None:
        while self._may_send(now := time.perf_counter()):
            await self._send(now, sent=now)

    async def _open_loop(self, rate: float) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        index = 0
        while self._may_send(due := self.plan.start + index / rate):
            # NOTE: the due time comes from the schedule, never from the clock: when the client falls
            # behind (a slow loop, a burst of answers), the requests go late and their latency says so.
            # NOTE: yields even when late (sleep(0)), so that the requests already due start going out
            await asyncio.sleep(max(due - time.perf_counter(), 0))
            task = asyncio.create_task(self._send(due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            index += 1
        await asyncio.gather(*in_flight)

    async def _show_progress(self) -> None:
        assert self.progress is not None
        tty = self.progress.isatty()
        seen, width = 0, 0
        try:
            while True:
                await asyncio.sleep(TTY_INTERVAL_S if tty else LOG_INTERVAL_S)
                line = self._progress_line(seen)
                seen = len(self.records)
                if tty:
                    self.progress.write("\r" + line.ljust(width))
                    width = len(line)
                else:
                    self.progress.write(line + "\n")
                self.progress.flush()
        finally:
            if tty and width:
                self.progress.write("\r" + " " * width + "\r")
                self.progress.flush()

    def _progress_line(self, since: int) -> str:
        """Time so far, measured answers and errors, and the p50 of the answers since record ``since``."""
        records, plan = self.records, self.plan
        now = time.perf_counter()
        if now < plan.measured_from:
            return f"{self.label} warm-up {now - plan.start:.1f} s of {plan.measured_from - plan.start:.1f}"
        recent = [records.done[i] - records.due[i] for i in range(since, len(records))
                  if records.codes[i] == OK and records.due[i] >= plan.measured_from]  # fmt: skip
        p50 = f"{np.median(recent) * 1000:.2f} ms" if recent else "-"
        return (f"{self.label} {now - plan.measured_from:.1f} s of {plan.end - plan.measured_from:.1f}  "
                f"requests {self.measured_done}  errors {self.measured_failed}  p50 {p50}")  # fmt: skip
