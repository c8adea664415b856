"""Hostile input that costs the server more than any single limit shows (issue "Hardening: no single
request may cost gigabytes, freeze the server, or get a 500"), each with its expected status and a
bound on memory or on how long a health probe over the other protocol waits meanwhile.

All traffic goes to 127.0.0.1, bounded in count and time. The probe latency is a bound on a probe
("the event loop stayed responsive"), with a wide margin, not a timing of tlserve's own code.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import grpc
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.reliability.conftest import Record, RssSampler
from tests.reliability.load import png
from tests.service.conftest import ServerProcess
from tests.service.h2raw import slow_bodies
from tests.service.tiny import publish
from tlserve.service import messages
from tlserve.service.bench.calls import open_channel
from tlserve.service.client import channel
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb2
from tlserve.service.wire.tfs import serving_pb2
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb
from tlserve.service.wire.tlserve.v1 import inference_pb2

TOKEN = "hardening-suite-token-0123456789"
AUTH = [("authorization", f"Bearer {TOKEN}")]
MAX_BATCH = 8


def _server(tmp_path: Path, env: dict[str, str] | None = None, token: str | None = None) -> ServerProcess:
    repository = tmp_path / "models"
    publish(repository, "colors", 1)
    server = ServerProcess(repository, "--max-batch-size", str(MAX_BATCH), env=env, token=token)
    server.wait_ready("colors")
    return server


def _mb(value: float) -> float:
    return round(value, 1)


def _stop_cleanly(server: ServerProcess) -> None:
    """Stop the server: exit 0, and no traceback or ERROR in its log (hostile input is never a bug)."""
    assert server.stop() == 0, server.log
    assert not [line for line in server.lines if "Traceback" in line or " ERROR " in line], server.log


# --- 1. HTTP/2: many calls that each send part of a large message and never finish --------------
def test_slow_bodies_without_a_token_cost_no_memory(tmp_path: Path, record: Record) -> None:
    """The probe's attack: one connection, 600 calls each declaring a 60 MB message and sending 4 MB
    of it, no token. Before: +2.3 GB in 9 s. Now every call is refused before its message is read
    (UNAUTHENTICATED) or not opened at all (past max_concurrent_streams, REFUSED_STREAM)."""
    server = _server(tmp_path, env={"TLSERVE_AUTH_TOKENS": TOKEN}, token=TOKEN)
    sampler = RssSampler(server.pid)
    idle = sampler.now_mb()
    try:
        connection = slow_bodies(server.grpc_port, messages.CLASSIFY, 600, 60 << 20, 4 << 20, seconds=10)
        with server.client() as client:
            assert client.health() == "SERVING"
        peak = sampler.peak_mb
        stats = connection.stats
        connection.close()
    finally:
        sampler.stop()
        _stop_cleanly(server)
    record("hardening-slow-bodies-no-token", {
        "streams": 600, "declared_mb": 60, "sent_mb": _mb(stats.bytes_sent / 2**20),
        "refused": stats.refused, "answered": stats.answered,
        "rss_mb": {"idle": _mb(idle), "peak": _mb(peak), "rise": _mb(peak - idle)},
    })  # fmt: skip
    assert stats.refused + stats.answered == 600, stats
    assert stats.bytes_sent < 50 << 20, stats
    assert peak - idle < 50, (idle, peak)


def test_slow_bodies_with_a_token_stay_within_the_request_budget(tmp_path: Path, record: Record) -> None:
    """A client with a token: 4 connections of 100 calls, each call declaring 60 MB and sending up
    to 50 MB of it. Only what max_inflight_request_bytes (here 128 MiB) lets in is read; every other
    call waits unread in its 64 KiB window; a read that stalls ends after body_timeout_s."""
    budget_mb = 128
    env = {"TLSERVE_AUTH_TOKENS": TOKEN, "TLSERVE_MAX_INFLIGHT_REQUEST_BYTES": str(budget_mb << 20),
           "TLSERVE_BODY_TIMEOUT_S": "3"}  # fmt: skip
    server = _server(tmp_path, env=env, token=TOKEN)
    sampler = RssSampler(server.pid)
    idle = sampler.now_mb()
    connections = []
    try:
        for _ in range(4):
            connection = slow_bodies(server.grpc_port, messages.CLASSIFY, 100, 60 << 20, 50 << 20, 2.5, AUTH)
            connections.append(connection)
        with server.client() as client:
            assert client.health() == "SERVING"  # health reads from a budget of its own
        time.sleep(1.5)  # past body_timeout_s: the stalled reads are answered
        for connection in connections:
            connection.pump(0.2)
        peak = sampler.peak_mb
        answered = sum(c.stats.answered for c in connections)
        sent = sum(c.stats.bytes_sent for c in connections)
        for connection in connections:
            connection.close()
        with server.client() as client:  # the attack gone, a good call is served
            assert client.classify("colors", [_png()]).predictions[0][0].label == "red"
    finally:
        sampler.stop()
        _stop_cleanly(server)
    record("hardening-slow-bodies-token", {
        "connections": 4, "streams": 400, "declared_mb": 60, "budget_mb": budget_mb,
        "sent_mb": _mb(sent / 2**20), "answered_after_body_timeout": answered,
        "rss_mb": {"idle": _mb(idle), "peak": _mb(peak), "rise": _mb(peak - idle)},
    })  # fmt: skip
    assert answered >= 2  # the reads that had room timed out (DEADLINE_EXCEEDED)
    assert peak - idle < 300, (idle, peak)


def test_health_watches_are_capped(tmp_path: Path, record: Record) -> None:
    """Watch needs no token and lasts until the client leaves: past max_health_watches (here 20)
    new ones get RESOURCE_EXHAUSTED; Check and inference are unaffected."""
    server = _server(tmp_path, env={"TLSERVE_MAX_HEALTH_WATCHES": "20"})

    async def watch(count: int) -> list[str]:
        async with open_channel(server.target) as to_server:
            stub = health_pb2_grpc.HealthStub(to_server)
            calls = [stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20) for _ in range(count)]

            async def first(call: aio.UnaryStreamCall) -> str:  # type: ignore[type-arg]
                try:
                    answer = await call.read()
                    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)  # type: ignore[union-attr]
                except grpc.RpcError as exc:
                    return exc.code().name  # type: ignore[attr-defined, no-any-return]

            outcomes = await asyncio.gather(*(first(c) for c in calls))
            with server.client() as client:  # while the watches are open
                assert client.health() == "SERVING"
                assert client.classify("colors", [_png()]).predictions[0][0].label == "red"
            for call in calls:
                call.cancel()
            return outcomes

    try:
        outcomes = asyncio.run(watch(30))
    finally:
        _stop_cleanly(server)
    record("hardening-health-watches", {"opened": 30, "limit": 20, "outcomes": sorted(set(outcomes)),
                                        "serving": outcomes.count("SERVING")})  # fmt: skip
    assert outcomes.count("SERVING") == 20 and outcomes.count("RESOURCE_EXHAUSTED") == 10, outcomes


# --- 2. one request must not freeze the event loop ------------------------------------------------
class Prober:
    """Calls ``probe`` over and over in a thread, keeping each call's latency, until stopped."""

    def __init__(self, probe: Callable[[], None]) -> None:
        self.latencies: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._probe = probe
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            self._probe()
            self.latencies.append((start, time.monotonic() - start))
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def worst_between(self, start: float, end: float) -> float:
        """The longest probe that overlapped [start, end]."""
        return max((s for t, s in self.latencies if t <= end and t + s >= start), default=0.0)


def _grpc_health(server: ServerProcess) -> Callable[[], None]:
    stub = health_pb2_grpc.HealthStub(channel(server.target))
    return lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=30) and None


def _rest_health(server: ServerProcess) -> Callable[[], None]:
    def probe() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        connection.request("GET", "/v2/health/live")
        assert connection.getresponse().status == 200
        connection.close()

    return probe


def _field(number: int, payload: bytes) -> bytes:
    return _VarintBytes(number << 3 | 2) + _VarintBytes(len(payload)) + payload


@cache
def _hostile(case: str) -> bytes:
    """The request bodies (gRPC: the serialized message), built without ever holding them parsed."""
    if case == "deflate":  # 58 KB that inflate to 60 MB of JSON
        return zlib.compress(b'{"instances": [' + b"0," * 30_000_000 + b"0]}", 9)
    if case == "json":
        return b'{"instances": [' + b"0," * 30_000_000 + b"0]}"
    if case == "oip-bytes":  # shape [16 M], 16 M zero-length elements in the raw contents
        count = 16_000_000
        request = oip_pb2.ModelInferRequest(model_name="colors")
        request.inputs.add(name="images", datatype="BYTES", shape=[count])
        return request.SerializeToString() + _field(7, b"\0\0\0\0" * count)  # raw_input_contents = 7
    if case == "examples":  # 2 M tf.Examples of a one-byte image each
        example = serving_pb2.ExampleList()
        example.examples.add().features.feature["image/encoded"].bytes_list.value.append(b"x")
        return _field(2, _field(1, example.SerializeToString() * 2_000_000))  # input.example_list
    assert case == "strings"  # predict_images of 15 M two-byte strings
    tensor = tf_pb.TensorProto(dtype=tf_pb.DT_STRING)
    tensor.tensor_shape.dim.add(size=15_000_000)
    tensor_bytes = tensor.SerializeToString() + b"\x42\x02ab" * 15_000_000  # string_val = 8
    spec = serving_pb2.PredictRequest(model_spec={"name": "colors", "signature_name": "predict_images"})
    return spec.SerializeToString() + _field(2, _field(1, b"images") + _field(2, tensor_bytes))


def _rest(server: ServerProcess, body: bytes, headers: dict[str, str]) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    connection.request(
        "POST", "/v1/models/colors:predict", body, {"Content-Type": "application/json", **headers}
    )
    status = connection.getresponse().status
    connection.close()
    return str(status)


def _grpc(server: ServerProcess, method: str, body: bytes) -> str:
    with channel(server.target) as to_server:
        try:
            to_server.unary_unary(method)(body, timeout=60)
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[attr-defined, no-any-return]
    return "OK"


RSS_BUDGET_MB = 300
"""What one hostile request may add to the server's memory while it is read and refused (measured:
at most about 210 MB, for 64 MB of 16 M zero-length OIP BYTES elements)."""
FREEZERS = {
    "REST deflate body inflating 58 KB to 60 MB of JSON": ("deflate", "413"),
    "REST 60 MB of JSON numbers": ("json", "400"),
    "OIP BYTES of 16 M zero-length elements (64 MB)": ("oip-bytes", "INVALID_ARGUMENT"),
    "TF Serving Classify of 2 M tiny tf.Examples (56 MB)": ("examples", "INVALID_ARGUMENT"),
    "TF Serving predict_images of 15 M two-byte strings (60 MB)": ("strings", "INVALID_ARGUMENT"),
}
METHODS = {"oip-bytes": messages.MODEL_INFER, "examples": messages.TFS_CLASSIFY, "strings": messages.PREDICT}


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = _server(tmp_path_factory.mktemp("loop"))
    yield server
    _stop_cleanly(server)


@pytest.mark.slow  # NOTE: a latency bound, loose but timing all the same: make test-all, not CI
@pytest.mark.parametrize("case", list(FREEZERS))
def test_one_request_does_not_freeze_the_event_loop(loop_server: ServerProcess, record: Record,
                                                     case: str) -> None:  # fmt: skip
    """While the hostile request is sent and refused, a health probe over the other protocol keeps
    being answered: the event loop stayed responsive (before: 6-17 s frozen, up to +2.7 GB)."""
    kind, expected = FREEZERS[case]
    body = _hostile(kind)
    sampler = RssSampler(loop_server.pid)
    before = sampler.now_mb()
    rest = kind in ("deflate", "json")
    prober = Prober(_grpc_health(loop_server) if rest else _rest_health(loop_server))
    try:
        time.sleep(0.2)
        start = time.monotonic()
        if rest:
            got = _rest(loop_server, body, {"Content-Encoding": "deflate"} if kind == "deflate" else {})
        else:
            got = _grpc(loop_server, METHODS[kind], body)
        end = time.monotonic()
        time.sleep(0.1)
    finally:
        prober.stop()
        sampler.stop()
    worst = prober.worst_between(start, end)
    record(f"hardening-freeze-{kind}", {
        "case": case, "bytes": len(body), "expected": expected, "got": got, "seconds": round(end - start, 2),
        "probes_during": sum(1 for t, s in prober.latencies if start <= t <= end),
        "worst_probe_ms": round(worst * 1000, 1), "rss_before_mb": _mb(before),
        "rss_peak_mb": _mb(sampler.peak_mb),
    })  # fmt: skip
    assert got == expected
    # NOTE: before, probes waited 6-17 s; the margin is for a shared 2-core machine under load
    assert worst < 2.0, f"a health probe waited {worst:.2f} s"
    rise = sampler.peak_mb - before
    assert rise < RSS_BUDGET_MB, f"one request raised RSS by {rise:.0f} MB (budget {RSS_BUDGET_MB} MB)"


# --- 3. rejected requests must not stay in memory -------------------------------------------------
@cache
def _png() -> bytes:
    return png()


def test_rejected_large_requests_do_not_stay_in_memory(tmp_path: Path, record: Record) -> None:
    """8 rejected 19 MB requests of each kind: images that are not images (refused in a decode
    thread) and one image over max_batch_size. Before, each left ~45 MB behind until the garbage
    collector ran; now memory stays flat after the first ones."""
    server = _server(tmp_path)
    signature = b"\x89PNG\r\n\x1a\n"
    junk = inference_pb2.ClassifyRequest(model="colors")
    junk.images.extend(signature + bytes([i]) * 2_400_000 for i in range(MAX_BATCH))
    too_many = inference_pb2.ClassifyRequest(model="colors")
    too_many.images.extend(bytes([i]) * 2_100_000 for i in range(MAX_BATCH + 1))
    series: dict[str, list[float]] = {}
    idle = server.rss_mb()
    try:
        with channel(server.target) as to_server:
            call = to_server.unary_unary(messages.CLASSIFY)
            for name, request in (("images that are not images", junk), ("one image too many", too_many)):
                data = request.SerializeToString()
                for _ in range(8):
                    with pytest.raises(grpc.RpcError) as error:
                        call(data, timeout=60)
                    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    time.sleep(0.2)
                    series.setdefault(name, []).append(_mb(server.rss_mb()))
    finally:
        _stop_cleanly(server)
    record("hardening-rejected-memory", {"request_mb": 19, "idle_mb": _mb(idle), "rss_mb_after_each": series})
    for name, values in series.items():
        assert values[-1] - values[1] < 60, (name, values)
    assert max(max(v) for v in series.values()) - idle < 250, series
