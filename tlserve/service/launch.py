"""Start ``tlserve serve`` as a child process and stop it cleanly (used by the demo, benchmarks, tests);
what it costs while it runs (memory, CPU time)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tlserve.errors import TlserveError
from tlserve.service.client import Client, Tls


def rss_mb(pid: int) -> float:
    """A process's resident memory now, in MB (Linux /proc); OSError once it has gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise TlserveError(f"no VmRSS in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LISTENING = re.compile(
    r"listening: grpc=[^:]+:(\d+) http=(?:[^:]+:(\d+)|off) metrics=(?:[^:]+:(\d+)|off)"
    r"(?: health=(?:[^:]+:(\d+)|off))?"
)


class ServerProcess:
    """``tlserve serve --repository REPO`` on 127.0.0.1 with ports it picks; stderr kept in ``log``.
    Needs the INFO-level ``listening:`` line, so do not pass a higher ``--log-level``."""

    def __init__(
        self,
        repository: Path | str,
        *args: str,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 120,
        tls: Tls | None = None,
        token: str | None = None,
    ) -> None:
        """``tls`` and ``token``: what ``client()`` connects with (the server's flags are in ``args``)."""
        self.tls = tls
        self.token = token
        where = ["--repository", str(repository), "--host", "127.0.0.1"]
        ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
        command = [sys.executable, "-m", "tlserve", "serve", *where, *ports, *args]
        self.started = time.perf_counter()
        environment = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.grpc_port = self.http_port = self.metrics_port = self.health_port = 0
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + start_timeout_s
        while not self._listening.wait(0.1) and self.proc.poll() is None and time.monotonic() < deadline:
            pass
        if not self._listening.is_set() or self.proc.poll() is not None:
            self.stop()
            raise TlserveError("the server did not start:\n" + self.log)
        self.target = f"127.0.0.1:{self.grpc_port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.grpc_port = int(match.group(1))
                self.http_port = int(match.group(2) or 0)
                self.metrics_port = int(match.group(3) or 0)
                self.health_port = int(match.group(4) or 0)
                self._listening.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def client(self, timeout_s: float = 10.0) -> Client:
        return Client(self.target, timeout_s=timeout_s, tls=self.tls, token=self.token)

    def wait_ready(self, model: str, timeout_s: float = 60.0) -> None:
        """Block until health says SERVING for ``model``; TimeoutError if not within ``timeout_s``."""
        with self.client() as client:
            client.wait_ready(model, timeout_s=timeout_s)

    def wait_for(self, text: str, timeout_s: float = 30.0) -> None:
        """Block until ``text`` appears in the log; AssertionError with the log if it does not."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout_s} s:\n{self.log}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        """The server's resident memory now, in MB."""
        return rss_mb(self.proc.pid)

    def cpu_seconds(self) -> float:
        """The server's CPU time so far, user + system."""
        return cpu_seconds(self.proc.pid)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait; the exit code (0 for a clean shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
