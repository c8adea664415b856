"""The REST port's connection-level limits, over raw sockets: a declared body above the limit is
refused before it is read (and before ``100 Continue``), idle and slow connections are closed, a
stalled body is answered 408, and past max_http_connections a connection gets 503 at once."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import ServerProcess
from tests.service.tiny import SIZE, publish

TIMEOUT_S = 1.0
PREDICT = b"POST /v1/models/colors:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
GOOD = b'{"instances": [[' + b",".join([b"[" + b",".join([b"[200, 40, 40]"] * SIZE) + b"]"] * SIZE) + b"]]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("models")
    publish(repository, "colors", 1)
    env = {"TLSERVE_MAX_MESSAGE_BYTES": str(1 << 20), "TLSERVE_HTTP_KEEPALIVE_TIMEOUT_S": str(TIMEOUT_S),
           "TLSERVE_BODY_TIMEOUT_S": str(TIMEOUT_S)}  # fmt: skip
    process = ServerProcess(repository, env=env)
    with process.client() as client:
        client.wait_ready("colors")
    yield process
    assert process.stop() == 0, process.log


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=10)


def answer(sock: socket.socket) -> bytes:
    """What the server sends until it pauses for 0.3 s or closes (b"" only if it closed at once)."""
    data = sock.recv(65536)
    sock.settimeout(0.3)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    sock.settimeout(10)
    return data


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (reading and dropping what it sends), or None."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_a_good_request_over_a_raw_socket(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(PREDICT + b"Content-Length: %d\r\n\r\n" % len(GOOD) + GOOD)
        assert answer(sock).startswith(b"HTTP/1.1 200 ")


def test_a_declared_body_above_the_limit_is_refused_before_it_is_read(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(PREDICT + b"Content-Length: 999999999999\r\n\r\n")  # and not one byte of it
        reply = answer(sock)
        assert reply.startswith(b"HTTP/1.1 413 ") and b"999999999999" in reply, reply
        assert closed_within(sock, 5) is not None


def test_expect_100_continue_is_not_granted_to_a_body_above_the_limit(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(PREDICT + b"Expect: 100-continue\r\nContent-Length: 100000000\r\n\r\n")
        reply = answer(sock)
        assert reply.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in reply, reply


def test_expect_100_continue_is_granted_when_the_body_is_wanted(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(PREDICT + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(GOOD))
        assert answer(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(GOOD)
        assert answer(sock).startswith(b"HTTP/1.1 200 ")


def test_a_stalled_body_is_answered_408(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(PREDICT + b"Content-Length: 1000\r\n\r\n" + b'{"instances": ')
        start = time.monotonic()
        reply = answer(sock)
        assert reply.startswith(b"HTTP/1.1 408 ") and b"body_timeout_s" in reply, reply
        assert time.monotonic() - start < 5 * TIMEOUT_S


@pytest.mark.parametrize("sent", [b"", PREDICT[:30], b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"])
def test_idle_slow_and_kept_alive_connections_are_closed(server: ServerProcess, sent: bytes) -> None:
    """Nothing sent, half a request line, or a finished request on a kept-alive connection: closed
    after http_keepalive_timeout_s (aiohttp's own default is an hour)."""
    with connect(server) as sock:
        sock.sendall(sent)
        seconds = closed_within(sock, 10 * TIMEOUT_S)
    assert seconds is not None and seconds < 5 * TIMEOUT_S, seconds


def test_connections_past_the_cap_get_503_and_grpc_still_serves(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    publish(repository, "colors", 1)
    server = ServerProcess(repository, env={"TLSERVE_MAX_HTTP_CONNECTIONS": "4"})
    held: list[socket.socket] = []
    try:
        for _ in range(4):  # NOTE: each answered, so each is surely accepted and counted (kept alive)
            held.append(connect(server))
            held[-1].sendall(LIVE)
            assert answer(held[-1]).startswith(b"HTTP/1.1 200 ")
        with connect(server) as refused:
            reply = answer(refused)
        assert reply.startswith(b"HTTP/1.1 503 ") and b"max_http_connections" in reply, reply
        with server.client() as client:
            assert client.health() == "SERVING"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as page:
            metrics = page.read().decode()
        assert 'tlserve_connections_refused_total{api="rest"} 1.0' in metrics
        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + 10  # NOTE: until the server has seen the closes
        while True:
            with connect(server) as sock:
                sock.sendall(LIVE)
                try:
                    reply = answer(sock)
                except ConnectionResetError:  # NOTE: refused (503, then closed): not seen yet
                    reply = b""
            if reply.startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0, server.log


def test_the_open_file_limit_is_raised_to_fit_both_connection_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    from tlserve.service import server

    limits = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda kind: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda kind, value: limits.update(now=value))
    server.raise_open_file_limit(2000)
    assert limits["now"] == (2000 + server.OWN_FILES, 4096)
    server.raise_open_file_limit(10_000)  # more than the hard limit allows: as far as it goes
    assert limits["now"] == (4096, 4096)
