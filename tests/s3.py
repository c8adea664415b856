"""A real S3 API server on 127.0.0.1 (moto's, in a thread of the test process), and versions of the
tiny model uploaded into it the way ``tlserve export`` does (every file, then the manifest)."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.service.tiny import publish
from tlserve import repository as repo
from tlserve.storage import Remote

BUCKET = "models"


class S3:
    """The server, stoppable and restartable on the same port with its objects kept (moto keeps
    them in this process)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._make = ThreadedMotoServer
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        self.env = {
            "AWS_ENDPOINT_URL": f"http://{self.host}:{self.port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.running = True
        # NOTE: moto keeps every server's objects in this process: start each test with none
        urllib.request.urlopen(urllib.request.Request(f"{self.env['AWS_ENDPOINT_URL']}/moto-api/reset",
                                                      method="POST"), timeout=10).close()  # fmt: skip

    def stop(self) -> None:
        self._server.stop()
        self.running = False

    def start(self) -> None:
        self._server = self._make(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.running = True

    def close(self) -> None:
        if self.running:
            self.stop()


@contextmanager
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """The server, with this process' AWS_* variables pointing at it and the bucket made."""
    pytest.importorskip("moto.server", reason="moto[s3] is a dev dependency (make install-dev)")
    pytest.importorskip("s3fs", reason="s3fs is the s3 extra (make install-dev)")
    server = S3()
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    try:
        Remote(f"s3://{BUCKET}").fs.mkdir(BUCKET)
        yield server
    finally:
        server.close()


def upload_tiny(
    remote: Remote,
    name: str,
    version: int,
    *,
    manifest: bool = True,
    corrupt: str | None = None,
    scale: float = 0.02,
) -> None:
    """Put version ``version`` of the tiny colour model under ``remote``: every file, then (unless
    ``manifest`` is False) its manifest. ``corrupt`` names a file uploaded as garbage instead."""
    work = Path(tempfile.mkdtemp(prefix="tiny-"))
    try:
        folder = publish(work, name, version, scale)
        files = {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}
        if corrupt is not None:
            (folder / corrupt).write_bytes(b"garbage")
        first = {f"{name}/{version}/{k}": p for k, p in files.items() if k != repo.MANIFEST_FILE}
        remote.upload(first)
        if manifest:
            remote.upload({f"{name}/{version}/{repo.MANIFEST_FILE}": files[repo.MANIFEST_FILE]})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def aws_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
