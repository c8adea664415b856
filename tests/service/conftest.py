"""Real servers in subprocesses on 127.0.0.1 with ports the server picks, and a tiny repository."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.tiny import publish
from tlserve.service.client import Client

LISTENING = re.compile(r"listening: grpc=[^:]+:(\d+) metrics=(?:[^:]+:(\d+)|off)")


class ServerProcess:
    """``tlserve serve`` in a subprocess; its stderr is collected in ``log``."""

    def __init__(self, repository: Path, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "tlserve", "serve", "--repository", str(repository),
                   "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0",
                   "--poll-interval-s", "0.2", *args]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.grpc_port = self.metrics_port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(120) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("server did not start:\n" + self.log)
        self.target = f"127.0.0.1:{self.grpc_port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.grpc_port = int(match.group(1))
                self.metrics_port = int(match.group(2) or 0)
                self._listening.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def client(self, timeout_s: float = 10.0) -> Client:
        return Client(self.target, timeout_s=timeout_s)

    def wait_for(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout_s} s:\n{self.log}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    publish(repository, "colors", 1)
    return repository


@pytest.fixture(scope="module")
def module_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("models")
    publish(repository, "colors", 1)
    return repository


@pytest.fixture(scope="module")
def server(module_repo: Path) -> Iterator[ServerProcess]:
    """A server on the tiny repository, shared by a test module; max batch 8, messages up to 1 MiB."""
    process = ServerProcess(
        module_repo, "--max-batch-size", "8", env={"TLSERVE_MAX_MESSAGE_BYTES": str(1 << 20)}
    )
    with process.client() as client:
        client.wait_ready("colors")
    yield process
    assert process.stop() == 0, process.log
