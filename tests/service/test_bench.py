"""`tlserve bench`: the summary's arithmetic, the load generator on fake calls, and real runs against a
server on the tiny model through every API and input it accepts. Counts and structure only: no
assertion here depends on how fast this machine is."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import ServerProcess
from tests.test_cli import assert_usage_error, leftovers, run_cli
from tlserve.cli import main
from tlserve.service.bench.calls import cycle
from tlserve.service.bench.load import Call, Load, Runner
from tlserve.service.bench.stats import (
    OK,
    Outcome,
    Records,
    by_code,
    count_codes,
    percentiles,
    ratios,
    summarize,
)

# NOTE: warm-up and duration are chosen off the open loop's 10 ms grid, so that which scheduled
# requests fall in the measured window is plain arithmetic: due at 0.21 s .. 0.70 s = 50 requests.
RATE, WARMUP, DURATION, MEASURED = 100, 0.205, 0.5, 50
SHORT = ["--warmup", str(WARMUP), "--duration", str(DURATION)]


# -- the summary, against numpy ------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_percentiles_match_numpy(size: int) -> None:
    values = np.random.default_rng(size).lognormal(0, 1, size)
    got = percentiles(values)
    assert list(got) == ["p50", "p90", "p99", "p99.9"]
    for name, q in zip(got, [50, 90, 99, 99.9], strict=True):
        assert got[name] == pytest.approx(np.percentile(values, q), rel=1e-12)
    assert got["p50"] <= got["p90"] <= got["p99"] <= got["p99.9"]
    assert percentiles(np.array([])) == {}


def test_summary_counts_the_measured_window_from_the_due_time() -> None:
    rng = np.random.default_rng(0)
    records = Records()
    due = np.sort(rng.uniform(0, 10, 500))
    lag = rng.uniform(0, 0.002, 500)
    service = rng.lognormal(-5, 0.5, 500)
    codes = [OK] * 500
    for i in (3, 250, 251, 400):
        codes[i] = "UNAVAILABLE"
    codes[300] = "DEADLINE_EXCEEDED"
    for d, g, s, c in zip(due, lag, service, codes, strict=True):
        records.add(d, d + g, d + g + s, c)
    summary = summarize(records, measured_from=2.0, batch_size=4)

    measured = due >= 2.0
    good = measured & (np.array(codes) == OK)
    latency_ms = (due[good] + lag[good] + service[good] - due[good]) * 1000  # from due, not from sent
    assert summary.requests == int(measured.sum())
    assert summary.ok == int(good.sum()) == summary.requests - 4
    assert summary.errors == {"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1}  # index 3 was in the warm-up
    assert summary.error_count == 4
    elapsed = float((due + lag + service)[measured].max() - 2.0)
    assert summary.elapsed_s == pytest.approx(elapsed)
    assert summary.requests_per_s == pytest.approx(summary.ok / elapsed)
    assert summary.images_per_s == pytest.approx(4 * summary.ok / elapsed)
    for name, q in [("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)]:
        assert summary.latency_ms[name] == pytest.approx(np.percentile(latency_ms, q))
    assert summary.latency_ms["min"] == pytest.approx(latency_ms.min())
    assert summary.latency_ms["mean"] == pytest.approx(latency_ms.mean())
    assert summary.latency_ms["max"] == pytest.approx(latency_ms.max())
    assert summary.send_lag_ms["p99"] == pytest.approx(np.percentile(lag[measured] * 1000, 99))
    as_json = json.loads(json.dumps(summary.to_dict()))
    assert as_json["errors"] == 4 and as_json["errors_by_code"]["UNAVAILABLE"] == 3


def test_summary_of_nothing_and_the_ratios() -> None:
    empty = summarize(Records(), measured_from=0.0, batch_size=1)
    assert (empty.requests, empty.ok, empty.requests_per_s, empty.latency_ms) == (0, 0, 0.0, {})
    failed = Records()
    failed.add(1.0, 1.0, 1.5, "UNAVAILABLE")
    summary = summarize(failed, measured_from=0.0, batch_size=1)
    assert (summary.requests, summary.ok, summary.errors, summary.latency_ms) == (
        1,
        0,
        {"UNAVAILABLE": 1},
        {},
    )
    fast, slow = Records(), Records()
    for i in range(10):
        fast.add(i, i, i + 0.5, OK)
        slow.add(i, i, i + 1.0, OK)
    figures = ratios(summarize(slow, 0.0, 1), summarize(fast, 0.0, 1))
    assert figures["p50"] == pytest.approx(2.0)
    assert figures["throughput"] == pytest.approx(9.5 / 10)
    assert ratios(summary, summarize(fast, 0.0, 1))["p50"] is None


# -- the load generator, on fake calls -----------------------------------------------------------


def test_closed_loop_keeps_n_in_flight_and_stops_at_max_requests() -> None:
    in_flight, most = 0, 0
    count = 0

    async def call() -> Outcome:
        nonlocal in_flight, most, count
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        count += 1
        return Outcome("UNAVAILABLE" if count % 5 == 0 else OK)

    runner = Runner(call, Load(concurrency=3, rate=None, warmup_s=0, duration_s=60, max_requests=40))
    records = asyncio.run(runner.run())
    summary = summarize(records, runner.plan.measured_from, batch_size=1)
    assert most == 3
    assert len(records) == summary.requests == 40
    assert summary.errors == {"UNAVAILABLE": 8} and summary.ok == 32
    assert all(d == s for d, s in zip(records.due, records.sent, strict=True))  # due = sent, closed loop


def test_open_loop_sends_on_schedule_whatever_the_answers() -> None:
    lock = asyncio.Lock()

    async def one_at_a_time() -> Outcome:  # a server far slower than the rate: answers queue up
        async with lock:
            await asyncio.sleep(0.02)
        return Outcome(OK)

    runner = Runner(one_at_a_time, Load(None, 100, 0.055, 0.24, max_requests=1000))
    records = asyncio.run(runner.run())
    due = np.sort(np.asarray(records.due)) - runner.plan.start
    assert len(records) == 30  # due at 0.00 .. 0.29 s, every one answered
    assert np.allclose(due, np.arange(30) / 100)
    summary = summarize(records, runner.plan.measured_from, batch_size=1)
    assert summary.requests == summary.ok == 24  # due at 0.06 .. 0.29 s
    latency = np.asarray(records.done) - np.asarray(records.due)
    # NOTE: each answer takes 20 ms and they come one at a time, so the k-th waits for k before it:
    # measured from the schedule, the queue shows (a closed loop would have sent 5x fewer requests).
    order = np.argsort(records.due)
    assert all(latency[i] >= 0.02 * (k + 1) - 0.01 * k - 1e-3 for k, i in enumerate(order))


def test_a_stalled_client_counts_its_own_lateness() -> None:
    calls = 0

    async def call() -> Outcome:
        nonlocal calls
        calls += 1
        if calls == 20:
            time.sleep(0.05)  # blocks the event loop: the requests due meanwhile go late
        return Outcome(OK)

    runner = Runner(call, Load(None, 400, 0, 0.199, max_requests=1000))
    records = asyncio.run(runner.run())
    summary = summarize(records, runner.plan.measured_from, batch_size=1)
    assert summary.requests == 80
    assert summary.send_lag_ms["max"] >= 40
    assert summary.latency_ms["max"] >= summary.send_lag_ms["max"]


def test_open_loop_behind_schedule_still_sends_as_it_goes() -> None:
    in_flight, most = 0, 0

    async def call() -> Outcome:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return Outcome(OK)

    # a rate no client reaches: every request is already late when its turn comes
    records = asyncio.run(Runner(call, Load(None, 1e7, 0, 10, max_requests=2000)).run())
    assert len(records) == 2000
    assert most < 100  # not 2000 tasks created first and sent afterwards


def _labelled(kind: str, code: str = OK) -> Call:
    async def call() -> Outcome:
        await asyncio.sleep(0.001)
        return Outcome(code, 1, kind)

    return call


def test_several_calls_one_per_client_or_in_turn() -> None:
    # NOTE: each client sends its first request before any is answered, and that is the budget
    closed = Runner([_labelled("a"), _labelled("b")], Load(4, None, 0, 60, max_requests=4))
    records = asyncio.run(closed.run())
    assert len(records) == 4 and set(records.versions) == {1}
    assert Counter(records.kinds) == {"a": 2, "b": 2}  # clients 0 and 2 make a, 1 and 3 make b
    opened = Runner([_labelled("a"), _labelled("b"), _labelled("c")], Load(None, 1000, 0, 0.0095, 100))
    records = asyncio.run(opened.run())
    assert [records.kinds[i] for i in np.argsort(records.due)] == list("abcabcabca")


def test_cycle_takes_each_call_in_turn_from_its_start() -> None:
    mixed = cycle([_labelled("a"), _labelled("b"), _labelled("c")], start=1)

    async def four() -> list[str]:
        return [(await mixed()).kind for _ in range(4)]

    assert asyncio.run(four()) == ["b", "c", "a", "b"]


def test_a_run_ends_when_told_and_a_client_pauses_after_unavailable() -> None:
    async def scenario() -> tuple[Records, Records]:
        until = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, until.set)
        told = Runner(_labelled("a"), Load(1, None, 0, 60, 1_000_000), until=until)
        backing_off = Load(1, None, 0, 0.2, 1_000, unavailable_pause_s=0.05)
        unavailable = Runner(_labelled("a", "UNAVAILABLE"), backing_off)
        return await told.run(), await unavailable.run()

    started = time.perf_counter()
    told, unavailable = asyncio.run(scenario())
    assert time.perf_counter() - started < 2  # not the 60 s planned
    assert len(told) > 0 and max(told.done) - min(told.due) < 0.5
    assert 2 <= len(unavailable) <= 5  # one call every ~51 ms for 0.2 s, not ~200
    assert count_codes(unavailable) == {"UNAVAILABLE": len(unavailable)}


def test_figures_by_code_count_from_since() -> None:
    records = Records()
    for i, (code, ms) in enumerate([(OK, 10), (OK, 30), ("RESOURCE_EXHAUSTED", 1), (OK, 20), (OK, 1000)]):
        records.add(float(i), float(i), i + ms / 1000, code, version=i, kind=f"k{i}")
    figures = by_code(records, since=1.0)
    assert figures["calls"] == 4 and figures["codes"] == {"OK": 3, "RESOURCE_EXHAUSTED": 1}
    assert figures["OK"] == {"p50_ms": pytest.approx(30.0), "p99_ms": pytest.approx(980.6),
                             "max_ms": pytest.approx(1000.0)}  # fmt: skip
    assert figures["RESOURCE_EXHAUSTED"]["max_ms"] == pytest.approx(1.0)
    assert by_code(records)["calls"] == 5 and count_codes(records, since=3.0) == {OK: 2}
    chosen = records.subset([4, 0])
    assert (chosen.codes, chosen.versions, chosen.kinds) == ([OK, OK], [4, 0], ["k4", "k0"])
    assert chosen.due == [4.0, 0.0]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_is_rewritten_in_place_on_a_terminal() -> None:
    async def call() -> Outcome:
        await asyncio.sleep(0.002)
        return Outcome(OK)

    terminal = _Terminal()
    asyncio.run(Runner(call, Load(1, None, 0.6, 0.6, 10_000), "server", terminal).run())
    text = terminal.getvalue()
    assert "\n" not in text and text.startswith("\rserver warm-up") and text.endswith("\r")
    assert "requests" in text and "errors 0" in text and "p50" in text


# -- real runs -----------------------------------------------------------------------------------


def _bench(capsys: pytest.CaptureFixture[str], server: ServerProcess, *args: str) -> str:
    code, out, err = run_cli(capsys, "bench", "--model", "colors", "--server", server.target, *args)
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    ("api", "kind", "loop"),
    [
        ("native", "jpeg", ["--concurrency", "2"]),
        ("tfs", "tensor", ["--rate", str(RATE)]),
        ("tfs", "jpeg", ["--concurrency", "3"]),
        ("v2", "tensor", ["--concurrency", "2"]),
        ("v2", "jpeg", ["--rate", str(RATE)]),
    ],
)
def test_every_api_and_input(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, tmp_path: Path, api: str, kind: str,
    loop: list[str],
) -> None:  # fmt: skip
    out = _bench(capsys, server, "--api", api, "--input", kind, "--batch-size", "2", *loop, *SHORT,
                 "--json", str(tmp_path / "bench.json"))  # fmt: skip
    assert f"{api} API, {kind} input" in out and "latency p99.9 (ms)" in out
    assert ("send lag p99 (ms)" in out) == (loop[0] == "--rate")
    doc = json.loads((tmp_path / "bench.json").read_text())
    settings, figures = doc["settings"], doc["server"]
    assert (settings["api"], settings["input"], settings["batch_size"]) == (api, kind, 2)
    assert settings["loop"] == ("open" if loop[0] == "--rate" else "closed")
    assert (doc["model"]["version"], doc["model"]["height"], doc["model"]["width"]) == (1, 16, 16)
    assert doc["machine"]["cores"] >= 1 and "grpcio" in doc["machine"]["versions"]
    assert figures["requests"] > 0 and figures["ok"] == figures["requests"]
    assert figures["errors"] == 0 and figures["errors_by_code"] == {}
    if loop[0] == "--rate":
        assert figures["requests"] == MEASURED  # on schedule, however the server answers
    latency = figures["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert figures["requests_per_s"] > 0
    assert figures["images_per_s"] == pytest.approx(2 * figures["requests_per_s"])
    assert doc["inprocess"] is None and doc["ratios"] is None
    assert leftovers(tmp_path) == []


def test_inprocess_baseline_ratios_and_plot(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, module_repo: Path, tmp_path: Path
) -> None:
    json_file, plot_file = tmp_path / "bench.json", tmp_path / "bench.png"
    out = _bench(capsys, server, "--api", "native", *SHORT, "--inprocess", "--repository", str(module_repo),
                 "--json", str(json_file), "--plot", str(plot_file))  # fmt: skip
    assert "in-process: model.onnx on CPUExecutionProvider" in out
    header = next(line for line in out.splitlines() if "in-process" in line and "ratio" in line)
    assert header.split() == ["server", "in-process", "ratio"]
    doc = json.loads(json_file.read_text())
    assert doc["inprocess"]["requests"] > 0 and doc["inprocess"]["errors"] == 0
    assert doc["inprocess"]["artifact"] == "model.onnx"
    assert doc["ratios"]["p50"] == pytest.approx(
        doc["server"]["latency_ms"]["p50"] / doc["inprocess"]["latency_ms"]["p50"]
    )
    assert doc["ratios"]["throughput"] == pytest.approx(
        doc["server"]["requests_per_s"] / doc["inprocess"]["requests_per_s"]
    )
    assert plot_file.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(plot_file) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 500
    assert leftovers(tmp_path) == []


def test_max_requests_and_an_image_file(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, tmp_path: Path
) -> None:
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (250, 10, 10)).save(image)
    out = _bench(capsys, server, "--image", str(image), "--max-requests", "25", "--warmup", "0",
                 "--duration", "60", "--json", str(tmp_path / "b.json"))  # fmt: skip
    assert f"tfs API, jpeg input ({image}, {image.stat().st_size} bytes)" in out
    assert json.loads((tmp_path / "b.json").read_text())["server"]["requests"] == 25


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "closed loop" in out and "open loop" in out and "coordinated omission" in out
    assert "examples: tlserve bench --model flowers" in out and "exit codes" in out
    assert "--inprocess" in out and "--max-requests" in out


# -- errors: exit code 2, one line saying what is wrong ------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--concurrency", "2", "--rate", "10"], ["--concurrency", "--rate", "not both"]),
        (["--concurrency", "0"], ["--concurrency must be positive", "0"]),
        (["--rate", "-5"], ["--rate must be positive"]),
        (["--duration", "0"], ["--duration must be positive"]),
        (["--batch-size", "0"], ["--batch-size must be positive"]),
        (["--max-requests", "0"], ["--max-requests must be positive"]),
        (["--timeout-s", "0"], ["--timeout-s must be positive"]),
        (["--warmup", "-1"], ["--warmup"]),
        (["--api", "native", "--input", "tensor"], ["native API takes encoded images", "--input jpeg"]),
        (["--input", "tensor", "--image", "x.jpg"], ["--image", "--input jpeg"]),
        (["--image", "/nonexistent/x.jpg"], ["cannot read --image /nonexistent/x.jpg"]),
        (["--inprocess"], ["--inprocess", "--repository REPO"]),
        (["--json", "/nonexistent/b.json"], ["--json", "/nonexistent", "does not exist"]),
        (["--json", "/"], ["--json", "is a directory"]),
        (["--plot", "b.svg"], ["--plot", "PNG"]),
        (["--plot", "/nonexistent/b.png"], ["--plot", "does not exist"]),
    ],
)
def test_bad_arguments(capsys: pytest.CaptureFixture[str], args: list[str], fragments: list[str]) -> None:
    assert_usage_error(capsys, ["bench", "--model", "colors", "--server", "127.0.0.1:1", *args], *fragments)


def test_no_server_no_model_and_a_batch_too_big(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, tmp_path: Path
) -> None:
    assert_usage_error(capsys, ["bench", "--model", "colors", "--server", "127.0.0.1:1"],
                       "no server answers at 127.0.0.1:1", "tlserve serve --repository REPO")  # fmt: skip
    target = ["--server", server.target]
    assert_usage_error(capsys, ["bench", "--model", "nope", *target], "'nope' is not served", "colors")
    assert_usage_error(capsys, ["bench", "--model", "colors", "--version", "7", *target],
                       "no version 7 serving", "v1 AVAILABLE")  # fmt: skip
    assert_usage_error(capsys, ["bench", "--model", "colors", "--batch-size", "9", *target],
                       "INVALID_ARGUMENT")  # fmt: skip
    assert_usage_error(capsys, ["bench", "--model", "colors", *target, "--inprocess", "--repository",
                                str(tmp_path)], "no model 'colors'")  # fmt: skip


@pytest.mark.parametrize("low, high", [(2.1, 4.7), (0.8, 3000.0), (45.0, 52.0), (0.05, 90.0), (3.0, 80.0)])
def test_log_axis_labels_do_not_overlap(low: float, high: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tlserve.service.bench.report import log_ticks

    figure = Figure(figsize=(5, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(np.geomspace(low, high, 50), np.linspace(0, 1, 50))
    axes.set(xscale="log")
    log_ticks(axes.xaxis)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    view_low, view_high = sorted(axes.get_xlim())
    shown = [
        t
        for t in axes.xaxis.get_ticklabels(which="both")
        if t.get_visible() and t.get_text() and view_low <= t.get_position()[0] <= view_high
    ]
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
    assert len(boxes) >= 1, "no labelled tick in view"
    assert all(a.x1 <= b.x0 for a, b in itertools.pairwise(boxes)), [t.get_text() for t in shown]
