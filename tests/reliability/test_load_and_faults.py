"""Load and fault suites against real server processes, each recording its figures.

Nothing here asserts a time: latencies are recorded (docs/reliability.md), the assertions are about
statuses, lost calls, versions and memory.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from tests.reliability.conftest import Record, RssSampler
from tests.reliability.load import closed_loop, open_loop
from tests.service.bombs import png_bomb
from tests.service.conftest import ServerProcess
from tests.service.tiny import copy_version, publish
from tlserve.service import messages
from tlserve.service.bench.calls import open_channel
from tlserve.service.bench.stats import Records, by_code, count_codes

MIXED = ["native-png", "tfs-tensor", "oip-tensor", "native-jpeg"]
SHORT, LONG = "short", "long"
DECODERS = 2
SCALES = [SHORT, pytest.param(LONG, marks=pytest.mark.slow)]


def _server(tmp_path: Path, work: int, *args: str) -> ServerProcess:
    repository = tmp_path / "models"
    publish(repository, "colors", 1, work=work)
    server = ServerProcess(repository, *args)
    server.wait_ready("colors")
    return server


@pytest.mark.parametrize("scale", SCALES)
def test_steady_mixed_load(tmp_path: Path, record: Record, rss, scale: str) -> None:
    """16 clients mixing the three APIs and PNG/JPEG/tensor inputs: no errors, no memory growth."""
    seconds, warmup = (30.0, 5.0) if scale == LONG else (6.0, 2.0)
    server = _server(tmp_path, 20)
    sampler: RssSampler = rss(server.pid)
    started = time.perf_counter()
    records = asyncio.run(closed_loop(server.target, "colors", 16, seconds, MIXED))
    sampler.stop()
    assert server.stop() == 0, server.log
    after_warmup = [mb for t, mb in sampler.series if t >= warmup]
    rss_warm, rss_end = after_warmup[0], after_warmup[-1]
    growth = (rss_end - rss_warm) / rss_warm
    summary = by_code(records, since=started + warmup)
    per_kind = Counter(records.kinds)
    record(f"steady-{scale}", {
        "clients": 16, "seconds": seconds, "warmup_s": warmup, **summary,
        "per_kind": {k: per_kind[k] for k in MIXED},
        "throughput_per_s": round(summary["calls"] / (seconds - warmup), 1),
        "rss_mb": {"after_warmup": round(rss_warm, 1), "end": round(rss_end, 1),
                   "peak": round(sampler.peak_mb, 1), "growth_pct": round(100 * growth, 2)},
    })  # fmt: skip
    assert count_codes(records) == {"OK": len(records)}, count_codes(records)
    assert all(per_kind[k] > 0 for k in MIXED)
    assert growth < 0.10, f"RSS grew {growth:.1%} after warm-up ({rss_warm:.0f} -> {rss_end:.0f} MB)"


@pytest.mark.parametrize("scale", SCALES)
def test_overload_is_rejected_at_once_and_admitted_calls_keep_their_latency(
    tmp_path: Path, record: Record, scale: str
) -> None:
    """A model that costs ~14 ms per image behind a queue of 8: offered 3x what it can do, the excess
    gets RESOURCE_EXHAUSTED immediately and the calls let in wait no longer than the queue allows."""
    seconds = 20.0 if scale == LONG else 5.0
    server = _server(
        tmp_path, 1000, "--intra-op-threads", "1", "--max-queue-size", "8", "--max-batch-size", "8"
    )
    try:
        capacity_run = asyncio.run(closed_loop(server.target, "colors", 8, 3.0, ["tfs-tensor"]))
        capacity = count_codes(capacity_run)["OK"] / 3.0
        baseline = asyncio.run(open_loop(server.target, "colors", capacity * 0.5, seconds / 2, "tfs-tensor"))
        overload = asyncio.run(open_loop(server.target, "colors", capacity * 3, seconds, "tfs-tensor"))
    finally:
        assert server.stop() == 0, server.log
    codes = count_codes(overload)
    record(f"overload-{scale}", {
        "capacity_per_s": round(capacity, 1), "offered_per_s": round(capacity * 3, 1), "seconds": seconds,
        "max_queue_size": 8, "at_capacity_8_clients": by_code(capacity_run),
        "baseline_at_half_capacity": by_code(baseline), "overload": by_code(overload),
        "rejected_pct": round(100 * codes["RESOURCE_EXHAUSTED"] / max(1, sum(codes.values())), 1),
    })  # fmt: skip
    assert count_codes(baseline) == {"OK": len(baseline)}, count_codes(baseline)
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes  # never DEADLINE_EXCEEDED, nothing else
    assert codes["RESOURCE_EXHAUSTED"] > codes["OK"] / 2  # about 2/3 of 3x must be turned away


@pytest.mark.parametrize("scale", SCALES)
def test_overload_with_short_deadlines_behind_a_long_queue(
    tmp_path: Path, record: Record, scale: str
) -> None:
    """The default queue (256) holds far more than 1 s of work: offered 3x capacity with 1 s deadlines,
    the excess is still refused at once (the queue ahead would outlast the deadline), not left to
    expire in the queue."""
    seconds = 20.0 if scale == LONG else 5.0
    server = _server(tmp_path, 1000, "--intra-op-threads", "1", "--max-batch-size", "8")
    try:
        capacity_run = asyncio.run(closed_loop(server.target, "colors", 8, 3.0, ["native-png"]))
        capacity = count_codes(capacity_run)["OK"] / 3.0
        overload = asyncio.run(
            open_loop(server.target, "colors", capacity * 3, seconds, "native-png", timeout_s=1.0)
        )
    finally:
        assert server.stop() == 0, server.log
    codes = count_codes(overload)
    record(f"overload-deadlines-{scale}", {
        "capacity_per_s": round(capacity, 1), "offered_per_s": round(capacity * 3, 1), "seconds": seconds,
        "deadline_s": 1.0, "max_queue_size": 256, "overload": by_code(overload),
    })  # fmt: skip
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, codes
    assert codes["RESOURCE_EXHAUSTED"] > codes["OK"] / 2
    # Admission estimates each request's wait from recent batch times: the excess is refused at once;
    # an admitted call may still run out of time when a batch runs slower than the recent ones.
    assert codes["DEADLINE_EXCEEDED"] < 0.1 * sum(codes.values()), codes


def test_sigterm_under_load_loses_no_accepted_call(tmp_path: Path, record: Record) -> None:
    """SIGTERM while 12 clients call a slow model: every call a handler accepted finishes OK (the
    access log, one line per handled call, is the server's own account), later ones are refused,
    the process exits 0."""
    server = _server(tmp_path, 300, "--intra-op-threads", "1", "--shutdown-grace-s", "10", "--access-log")
    sigterm_at = 0.0

    async def scenario() -> Records:
        nonlocal sigterm_at
        stop = asyncio.Event()
        load = asyncio.create_task(
            closed_loop(server.target, "colors", 12, 30.0, ["tfs-tensor", "native-png"], stop=stop,
                        timeout_s=20.0)
        )  # fmt: skip
        await asyncio.sleep(2.0)
        sigterm_at = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        stop.set()
        return await load

    records = asyncio.run(scenario())
    code = server.proc.wait(30)
    time.sleep(0.2)  # NOTE: the log reader thread takes the last lines
    handled = re.findall(r"(?:tfs Predict|native Classify) model=\S+ version=\S+ code=(\w+)", server.log)
    calls = range(len(records))
    in_flight = records.subset(i for i in calls if records.due[i] < sigterm_at < records.done[i])
    after = records.subset(i for i in calls if records.due[i] >= sigterm_at)
    client_codes = count_codes(records)
    record("sigterm-under-load", {
        "clients": 12, "calls": len(records), "client_codes": dict(client_codes),
        "handled_by_server": dict(Counter(handled)), "in_flight_at_sigterm": len(in_flight),
        "in_flight_codes": dict(count_codes(in_flight)),
        "after_sigterm_codes": dict(count_codes(after)),
        "last_in_flight_finished_ms": round(max((done - sigterm_at) * 1000 for done in in_flight.done), 1)
                                      if in_flight else None,
        "exit_code": code,
    })  # fmt: skip
    assert code == 0, server.log
    assert in_flight, "no call was in flight at SIGTERM: the test did not test anything"
    assert set(handled) == {"OK"}, Counter(handled)  # NOTE: no handler was cut short: nothing lost
    assert client_codes["OK"] == len(handled)  # every handled call reached its client
    # Calls the server never handled were refused: UNAVAILABLE, or CANCELLED by gRPC core for the
    # few that arrived at the instant it stopped accepting (the access log has no line for them).
    assert set(client_codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, client_codes
    early = count_codes(in_flight.subset(i for i, due in enumerate(in_flight.due) if due < sigterm_at - 0.05))
    assert set(early) <= {"OK"}, count_codes(in_flight)


def test_hot_swap_and_a_broken_version_under_load(tmp_path: Path, record: Record) -> None:
    """8 clients call while version 2 is published, then a broken version 3: no call fails, version 2
    takes over, version 3 never answers."""
    server = _server(tmp_path, 20)
    repository = tmp_path / "models"
    marks: dict[str, float] = {}

    async def scenario() -> Records:
        stop = asyncio.Event()
        load = asyncio.create_task(closed_loop(server.target, "colors", 8, 60.0, MIXED, stop=stop))
        await asyncio.sleep(1.0)
        marks["v2_published"] = time.perf_counter()
        copy_version(repository, "colors", 1, 2)
        await asyncio.to_thread(server.wait_for, "loaded colors version 2")
        await asyncio.sleep(1.0)
        marks["v3_published"] = time.perf_counter()
        copy_version(repository, "colors", 1, 3, corrupt="model.onnx")
        await asyncio.to_thread(server.wait_for, "colors version 3")
        await asyncio.sleep(1.0)
        stop.set()
        return await load

    try:
        records = asyncio.run(scenario())
    finally:
        assert server.stop() == 0, server.log
    answers = list(zip(records.due, records.versions, strict=True))
    v2_first = min(due for due, version in answers if version == 2)
    after_v3 = [version for due, version in answers if due >= marks["v3_published"]]
    versions = Counter(records.versions)
    record("hot-swap-under-load", {
        "clients": 8, **by_code(records),
        "answers_by_version": {str(v): versions[v] for v in (1, 2, 3)},
        "v2_first_answer_after_publish_s": round(v2_first - marks["v2_published"], 3),
        "calls_after_broken_v3": len(after_v3),
    })  # fmt: skip
    assert count_codes(records) == {"OK": len(records)}, count_codes(records)
    assert all(v == 2 for v in after_v3) and after_v3
    assert versions[3] == 0
    assert "failed to load" in server.log or "FAILED" in server.log, server.log


def test_concurrent_bombs_are_rejected_and_memory_stays_bounded(tmp_path: Path, record: Record) -> None:
    """32 concurrent requests of each kind of bomb: a 400-megapixel PNG (per-image limit); three
    36-megapixel PNGs (per-request pixel budget); then 32 concurrent 16-megapixel PNGs that are
    within the limits and really decoded, at most one per decode thread at a time."""
    repository = tmp_path / "models"
    publish(repository, "colors", 1)
    server = ServerProcess(repository, "--max-batch-size", "8", env={"TLSERVE_DECODE_THREADS": str(DECODERS)})
    sampler = RssSampler(server.pid)
    waves = {
        "400 MP bomb": [png_bomb(20000, 20000)],
        "3 x 36 MP (over the request budget)": [png_bomb(6000, 6000)] * 3,
        "16 MP, allowed and decoded": [png_bomb(4000, 4000)],
    }
    figures: dict[str, dict[str, object]] = {}
    rss_idle = sampler.now_mb()

    async def wave(images: list[bytes]) -> list[str]:
        body = messages.classify_request("colors", images).SerializeToString()
        async with open_channel(server.target) as channel:
            classify = channel.unary_unary(messages.CLASSIFY)

            async def one() -> str:
                try:
                    await classify(body, timeout=60)
                    return "OK"
                except grpc.RpcError as exc:
                    return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]

            return await asyncio.gather(*(one() for _ in range(32)))

    try:
        for name, images in waves.items():
            start = time.monotonic()
            outcomes = asyncio.run(wave(images))
            figures[name] = {"bytes_per_request": sum(map(len, images)), "outcomes": sorted(set(outcomes)),
                             "seconds": round(time.monotonic() - start, 2),
                             "rss_peak_mb": round(sampler.peak_mb, 1)}  # fmt: skip
            if name.startswith("16 MP"):
                assert set(outcomes) == {"OK"}, set(outcomes)
            else:
                assert all(o.startswith("INVALID_ARGUMENT") for o in outcomes), set(outcomes)
        with server.client() as client:
            assert client.classify("colors", [png_bomb(16, 16)]).version == 1  # still serving
    finally:
        sampler.stop()
        assert server.stop() == 0, server.log
    peak = sampler.peak_mb
    record("bombs", {"concurrent": 32, "rss_idle_mb": round(rss_idle, 1), "rss_peak_mb": round(peak, 1),
                     "waves": figures})  # fmt: skip
    # Per decode thread, a 16 MP grey image costs its decoded frame (16 MB) and numpy's copy of it
    # (16 MB; grey is resized before it becomes RGB), plus allocator slack: bounded by the decode
    # threads, not by the 32 requests (~1 GB at once).
    bound = DECODERS * (16 + 16) + 150
    assert peak - rss_idle < bound, f"RSS rose {peak - rss_idle:.0f} MB (bound {bound} MB)"
