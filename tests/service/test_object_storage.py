"""Serving from a bucket on a real S3 API server (moto's, on 127.0.0.1): new versions swapped in while
clients call, a version without its manifest never served, a corrupt file reported with the old
version serving, the store going away for a while, and the local cache holding only what serves."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.s3 import BUCKET, S3, s3_server, upload_tiny
from tests.service.conftest import ServerProcess
from tests.service.images import encoded
from tests.service.test_hot_reload import Traffic
from tlserve.service.client import Client
from tlserve.storage import Remote

URL = f"s3://{BUCKET}/repo"
SECRET = "not-a-real-secret-7f3a91"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with s3_server(monkeypatch) as server:
        server.env["AWS_SECRET_ACCESS_KEY"] = SECRET
        yield server


def serve(s3: S3, *args: str) -> ServerProcess:
    return ServerProcess(URL, *args, env=s3.env)


def states(server: ServerProcess) -> dict[int, tuple[str, str]]:
    with server.client() as client:
        return {v.version: (v.state, v.error) for v in client.list_models()["colors"]}


def metric(server: ServerProcess, series: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    [value] = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(series + " ")]
    return float(value)


def wait_until(condition: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_new_versions_in_the_bucket_are_served_under_traffic(s3: S3, tmp_path: Path) -> None:
    remote = Remote(URL)
    upload_tiny(remote, "colors", 1)
    cache = tmp_path / "cache"
    server = serve(s3, "--repository-cache-dir", str(cache))
    try:
        with server.client() as client:
            client.wait_ready("colors")
        assert [p.parent.name.split("-")[0] for p in (cache / "colors").glob("*/model.onnx")] == ["1"]
        traffic = Traffic(server)
        time.sleep(0.5)
        published = time.monotonic()
        upload_tiny(remote, "colors", 2)
        server.wait_for("unloaded colors version 1")
        time.sleep(0.5)
        traffic.stop()
        assert traffic.errors == []
        assert traffic.versions[1] > 0 and traffic.versions[2] > 0
        took = traffic.first_seen[2] - published  # NOTE: reported, not asserted (no timed assertions)
        downloads = [p.name.split("-")[0] for p in (cache / "colors").iterdir()]
        assert downloads == ["2"], "an unloaded version's download must go"
        assert server.log.count("loading colors version 2 ") == 1, server.log
        print(f"calls: {dict(traffic.versions)}, errors: 0, v2 answered {took:.2f} s after its manifest "
              "was uploaded (poll 0.2 s)")  # fmt: skip
    finally:
        assert server.stop() == 0, server.log
    assert SECRET not in server.log


@contextmanager
def serving_version_1(s3: S3) -> Iterator[tuple[Remote, ServerProcess, Client]]:
    """Version 1 of colors in the bucket, a server serving it, and a client; stopped cleanly after."""
    remote = Remote(URL)
    upload_tiny(remote, "colors", 1)
    server = serve(s3)
    try:
        with server.client() as client:
            client.wait_ready("colors")
            yield remote, server, client
    finally:
        if not s3.running:
            s3.start()
        assert server.stop() == 0, server.log


def publish_version_2_and_see_it_served(remote: Remote, server: ServerProcess, client: Client) -> None:
    upload_tiny(remote, "colors", 2)
    server.wait_for("loaded colors version 2")
    wait_until(lambda: client.classify("colors", [encoded("red")]).version == 2)


def test_a_version_without_its_manifest_is_never_served(s3: S3) -> None:
    with serving_version_1(s3) as (remote, server, client):
        upload_tiny(remote, "colors", 2, manifest=False)  # an upload still in progress
        time.sleep(2.0)  # ten polls
        assert client.classify("colors", [encoded("red")]).version == 1
        assert sorted(states(server)) == [1]  # not even seen
        assert "loading colors version 2" not in server.log
        publish_version_2_and_see_it_served(remote, server, client)  # the manifest arrives last


def test_a_corrupt_file_is_reported_and_the_old_version_keeps_serving(s3: S3) -> None:
    with serving_version_1(s3) as (remote, server, client):
        upload_tiny(remote, "colors", 2, corrupt="model.onnx")
        server.wait_for("colors version 2 failed to load")
        state, error = states(server)[2]
        assert state == "FAILED" and "sha256" in error and "model.onnx" in error, error
        assert "tlserve-cache" not in error  # no local paths reach clients
        assert client.classify("colors", [encoded("red")]).version == 1
        time.sleep(1.0)
        assert server.log.count("loading colors version 2 ") == 1, "retried only when it changes"
        publish_version_2_and_see_it_served(remote, server, client)  # fixed in place: its objects change


def test_the_store_going_away_leaves_the_server_serving_and_it_recovers(s3: S3) -> None:
    with serving_version_1(s3) as (remote, server, client):
        s3.stop()
        server.wait_for("cannot list", timeout_s=60)
        for _ in range(20):  # while it is away
            assert client.classify("colors", [encoded("red")]).version == 1
        assert client.health("colors") == "SERVING"
        time.sleep(1.0)
        assert server.log.count("cannot list") == 1, "said once per outage"
        assert metric(server, "tlserve_repository_up") == 0
        assert metric(server, 'tlserve_repository_errors_total{operation="list"}') >= 1
        s3.start()
        server.wait_for("can be listed again", timeout_s=60)
        assert metric(server, "tlserve_repository_up") == 1
        publish_version_2_and_see_it_served(remote, server, client)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"s3://{BUCKET}-missing/repo", f"bucket '{BUCKET}-missing' does not exist"),
        ("nosuchproto://bucket/repo", "unknown protocol 'nosuchproto'"),
        ("s3://", "names no bucket"),
        (URL, "cannot be written"),  # --repository-cache-dir
    ],
)
def test_a_bucket_that_cannot_be_served_is_said_in_one_line(s3: S3, url: str, said: str) -> None:
    args = ["--repository-cache-dir", "/proc/no-cache-here"] if said == "cannot be written" else []
    done = subprocess.run(
        [sys.executable, "-m", "tlserve", "serve", "--repository", url, "--grpc-port", "0", *args],
        capture_output=True, text=True, timeout=120, env={**s3.env, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], done.stderr
    assert SECRET not in done.stderr
