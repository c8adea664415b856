"""`tlserve predict` as a user meets it: per-file answers and errors, --wait, --top-k, the wrong port."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests.service.conftest import ServerProcess
from tests.service.images import encoded
from tests.test_cli import run_cli
from tlserve.service.client import Client, describe_rpc_error


def images(folder: Path, *names: str) -> list[str]:
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        path.write_bytes(encoded(name) if name in ("red", "green", "blue") else b"not an image")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("api", ["native", "tfs"])
def test_a_corrupt_file_is_named_and_the_others_are_answered(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, tmp_path: Path, api: str
) -> None:
    red, junk, blue = images(tmp_path, "red", "junk", "blue")
    code, out, err = run_cli(capsys, "predict", red, junk, blue, "--model", "colors", "--server",
                             server.target, "--api", api, "--top-k", "2")  # fmt: skip
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith(f"tlserve predict: failed: {junk}: not a ") and not re.search(r"image \d", line)
    header, *rows = out.splitlines()
    assert f"top 2 (model colors v1, {api} API" in header
    assert [row.split()[:2] for row in rows] == [[red, "red"], [blue, "blue"]]
    code, out, err = run_cli(capsys, "predict", junk, "--model", "colors", "--server", server.target)
    assert code == 1 and out == "" and err == line + "\n"


def test_top_k_above_the_class_count_shows_the_real_k(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, tmp_path: Path
) -> None:
    for api in ("native", "tfs"):
        argv = ["predict", *images(tmp_path, "green"), "--model", "colors", "--server", server.target]
        code, out, err = run_cli(capsys, *argv, "--top-k", "10", "--api", api)
        assert code == 0, err
        note, header, row = out.splitlines()
        assert note == "note: --top-k 10, but colors has 3 classes: showing 3"
        assert "top 3 (model colors v1" in header and len(row.split()) == 1 + 2 * 3


def test_the_rest_port_is_named_as_such(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, tmp_path: Path
) -> None:
    rest = f"127.0.0.1:{server.http_port}"
    code, _, err = run_cli(capsys, "predict", *images(tmp_path, "red"), "--model", "colors", "--server", rest)
    assert code == 1
    assert len(err.splitlines()) == 1 and "not a gRPC port" in err and "try --server 127.0.0.1:8500" in err
    with Client(rest, timeout_s=5) as client, pytest.raises(grpc.RpcError) as info:
        client.health()
    assert "8501 is the REST port of a tlserve server" in describe_rpc_error("example.com:8501", info.value)
    metrics = f"127.0.0.1:{server.metrics_port}"
    argv = ["predict", *images(tmp_path, "red"), "--model", "colors", "--server", metrics, "--wait", "1"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "not a gRPC port" in err and len(err.splitlines()) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wait_for_a_server_that_is_starting(
    capsys: pytest.CaptureFixture[str], module_repo: Path, tmp_path: Path
) -> None:
    port = free_port()
    argv = ["predict", *images(tmp_path, "blue"), "--model", "colors", "--server", f"127.0.0.1:{port}"]
    code, _, err = run_cli(capsys, *argv)  # no --wait: fails at once, as before
    assert code == 1 and "UNAVAILABLE" in err
    code, _, err = run_cli(capsys, *argv, "--wait", "0.5")
    assert code == 1 and len(err.splitlines()) == 1 and "UNAVAILABLE" in err
    started: list[ServerProcess] = []
    starter = threading.Timer(
        1.0, lambda: started.append(ServerProcess(module_repo, "--grpc-port", str(port)))
    )
    starter.start()
    try:
        began = time.monotonic()
        code, out, err = run_cli(capsys, *argv, "--wait", "120")
        assert code == 0, err
        assert out.splitlines()[1].split()[1] == "blue" and time.monotonic() - began > 1.0
    finally:
        starter.join()
        for process in started:
            assert process.stop() == 0, process.log
