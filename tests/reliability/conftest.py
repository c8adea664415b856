"""Reliability suites: real servers under load, faults and hostile input, each reporting figures.

Short versions run in ``make test``; the ``slow`` ones (the issue's full durations) in
``make test-all``. With TLSERVE_RELIABILITY_DIR set, every test writes its figures there as JSON;
``make reliability`` runs them all that way and renders docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tlserve.errors import TlserveError
from tlserve.service.launch import rss_mb

Record = Callable[[str, dict[str, Any]], None]
# NOTE: read at import: tests/conftest.py clears TLSERVE_* variables around every test
RELIABILITY_DIR = os.environ.get("TLSERVE_RELIABILITY_DIR")


def write_record(name: str, figures: dict[str, Any], test: str = "") -> None:
    """Print a suite's figures and, with TLSERVE_RELIABILITY_DIR set, keep them there as NAME.json."""
    figures = {"test": test, "machine": f"{platform.machine()}, {os.cpu_count()} cores", **figures}
    print(f"\n{name}: {json.dumps(figures, indent=1)}")
    if RELIABILITY_DIR:
        Path(RELIABILITY_DIR).mkdir(parents=True, exist_ok=True)
        (Path(RELIABILITY_DIR) / f"{name}.json").write_text(json.dumps(figures, indent=1) + "\n")


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """record(name, figures): keep a test's figures (JSON) for docs/reliability.md."""
    return lambda name, figures: write_record(name, figures, request.node.nodeid)


class RssSampler:
    """Samples a process's resident memory every ``every_s`` in a thread: ``peak_mb``, ``series``."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid = pid
        self.series: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._every = every_s
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now_mb(self) -> float:
        """0 once the process has gone."""
        try:
            return rss_mb(self.pid)
        except (OSError, TlserveError):
            return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.series.append((time.monotonic() - self._start, self.now_mb()))
            self._stop.wait(self._every)

    @property
    def peak_mb(self) -> float:
        return max((mb for _, mb in self.series), default=0.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def rss() -> Iterator[Callable[[int], RssSampler]]:
    samplers: list[RssSampler] = []

    def start(pid: int) -> RssSampler:
        samplers.append(RssSampler(pid))
        return samplers[-1]

    yield start
    for sampler in samplers:
        sampler.stop()
