"""The load generator: a closed loop (N clients back to back) or an open loop (a fixed rate), asyncio;
``measure`` runs one and summarizes it; ``p50_ms`` is the plain sequential timing loop of the
benchmarks.

``call`` sends one request and returns its Outcome; it is the only thing that differs between the
server and the in-process baseline (or between the APIs of a mixed run), so all are measured the
same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from tlserve.service.bench.stats import OK, Outcome, Records, Summary, summarize

Call = Callable[[], Awaitable[Outcome]]
TTY_INTERVAL_S = 0.5
LOG_INTERVAL_S = 10.0
UNAVAILABLE = "UNAVAILABLE"


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
    unavailable_pause_s: float = 0.0
    """Closed loop: how long a client waits after an UNAVAILABLE answer before its next request, as
    a real client backs off (0: at once)."""


@dataclass(frozen=True)
class Plan:
    start: float
    measured_from: float
    end: float


class Runner:
    """One load run: ``await Runner(call, load).run()`` fills ``records``; ``plan`` says what counts."""

    plan: Plan

    def __init__(
        self,
        call: Call | Sequence[Call],
        load: Load,
        label: str = "",
        progress: TextIO | None = None,
        until: asyncio.Event | None = None,
    ) -> None:
        """``call``: one call, or several: closed-loop client i makes call i (modulo their number),
        the open loop's n-th request call n (one per channel, say). ``until``: the run also ends
        once this is set (a scenario that decides when it has seen enough)."""
        self.calls = [call] if callable(call) else list(call)
        self.load = load
        self.label = label
        self.progress = progress
        """Where the progress line goes (rewritten in place on a terminal); None: no progress."""
        self.until = until
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
                clients = range(self.load.concurrency)
                await asyncio.gather(*(self._client(self.calls[i % len(self.calls)]) for i in clients))
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        return self.records

    def _may_send(self, due: float) -> bool:
        """Count a request due at ``due`` against the budget; False once the run is over."""
        if due >= self.plan.end or self.measured_sent >= self.load.max_requests:
            return False
        if self.until is not None and self.until.is_set():
            return False
        if due >= self.plan.measured_from:
            self.measured_sent += 1
        return True

    async def _send(self, call: Call, due: float, sent: float | None = None) -> str:
        sent = time.perf_counter() if sent is None else sent
        outcome = await call()
        self.records.add(due, sent, time.perf_counter(), *outcome)
        if due >= self.plan.measured_from:
            self.measured_done += 1
            self.measured_failed += outcome.code != OK
        return outcome.code

    async def _client(self, call: Call) -> None:
        pause = self.load.unavailable_pause_s
        while self._may_send(now := time.perf_counter()):
            if await self._send(call, now, sent=now) == UNAVAILABLE and pause:
                await asyncio.sleep(pause)

    async def _open_loop(self, rate: float) -> None:
        in_flight: set[asyncio.Task[str]] = set()
        index = 0
        while self._may_send(due := self.plan.start + index / rate):
            # NOTE: the due time comes from the schedule, never from the clock: when the client falls
            # behind (a slow loop, a burst of answers), the requests go late and their latency says so.
            # NOTE: yields even when late (sleep(0)), so that the requests already due start going out
            await asyncio.sleep(max(due - time.perf_counter(), 0))
            task = asyncio.create_task(self._send(self.calls[index % len(self.calls)], due))
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


@dataclass(frozen=True)
class Run:
    name: str
    """"server" or "in-process"."""
    summary: Summary
    records: Records
    plan: Plan
    cpu_s: float
    """CPU time of this process during the run (the client's own cost, for the server run; for the
    in-process run it includes onnxruntime's threads)."""
    wall_s: float

    @property
    def cpu_percent(self) -> float:
        """``cpu_s`` in % of one core."""
        return 100 * self.cpu_s / max(self.wall_s, 1e-9)


async def measure(
    name: str,
    call: Call | Sequence[Call],
    load: Load,
    batch: int,
    progress: TextIO | None = None,
    until: asyncio.Event | None = None,
) -> Run:
    """One run of ``load``, summarized (``batch`` images a request); what it cost this process."""
    runner = Runner(call, load, name, progress, until)
    cpu, wall = time.process_time(), time.perf_counter()
    records = await runner.run()
    cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall
    return Run(
        name, summarize(records, runner.plan.measured_from, batch), records, runner.plan, cpu_s, wall_s
    )


def p50_ms(call: Callable[[], object], calls: int, warmup: int = 10) -> float:
    """Median milliseconds of ``calls`` sequential calls, after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)
