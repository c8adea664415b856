"""``tlserve bench``: load a running server the way Triton's perf_analyzer does, and say what it costs.

    stats      records of a run -> percentiles, throughput, errors by code (pure)
    load       the asyncio load generator: closed loop (concurrency) or open loop (rate); a run
               measured; the sequential timing loop
    messages   each API's request message and method path, and what its answer says
    calls      those requests serialized once; the channel; the gRPC call; the first answer's check
    inprocess  the same load through onnxruntime in this process: the baseline of the ratios
    echo       a gRPC server answering nothing: the transport's own floor
    report     the printed table, machine facts, the JSON and PNG files

The one load generator of the project: ``tlserve bench``, the reliability suites (tests/reliability)
and the benchmarks (benchmarks/) all drive it. No TensorFlow here: the requests are built with
tlserve's own wire code.
"""

from __future__ import annotations

import asyncio
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc

from tlserve.errors import TlserveError, UsageError
from tlserve.service.bench import report
from tlserve.service.bench.calls import (
    APIS,
    INPUTS,
    PIXELS,
    Payload,
    Request,
    bearer,
    build_request,
    grpc_call,
    make_payload,
    open_channel,
)
from tlserve.service.bench.calls import probe as probe_server
from tlserve.service.bench.inprocess import Baseline, inprocess_call, open_session, read_manifest
from tlserve.service.bench.load import Load, Run, measure
from tlserve.service.bench.stats import ratios
from tlserve.service.client import Client, Tls, VersionInfo

__all__ = ["BenchOptions", "run"]
JSON_SCHEMA = 1


@dataclass(frozen=True)
class BenchOptions:
    model: str
    server: str = "localhost:8500"
    api: str = "tfs"
    input: str | None = None
    """"tensor" (float32 pixels), "uint8" (uint8 pixels) or "jpeg"; None: jpeg for the native API or
    with ``image``, tensor otherwise."""
    batch_size: int = 1
    concurrency: int | None = None
    """Closed loop with this many clients (1 when neither this nor ``rate`` is set)."""
    rate: float | None = None
    """Open loop at this many requests per second."""
    duration_s: float = 10.0
    warmup_s: float = 2.0
    max_requests: int = 1_000_000
    timeout_s: float = 10.0
    version: int = 0
    image: Path | None = None
    json: Path | None = None
    plot: Path | None = None
    inprocess: bool = False
    repository: Path | None = None
    tls: Tls | None = None
    """TLS (and mutual TLS) for servers started with a certificate."""
    token: str | None = None
    """Bearer token for servers started with auth tokens."""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return bearer(self.token)


def _check(options: BenchOptions) -> tuple[str, Load, bytes | None]:
    """Every argument checked before anything is sent: (input kind, load, the image's bytes)."""
    if options.concurrency is not None and options.rate is not None:
        raise UsageError("give --concurrency N (closed loop) or --rate R (open loop), not both")
    positive = {"--batch-size": options.batch_size, "--concurrency": options.concurrency,
                "--rate": options.rate, "--duration": options.duration_s,
                "--max-requests": options.max_requests, "--timeout-s": options.timeout_s}  # fmt: skip
    for flag, value in positive.items():
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be positive; got {value}")
    if not options.warmup_s >= 0:
        raise UsageError(f"--warmup must be 0 or more seconds; got {options.warmup_s}")
    if options.version < 0:
        raise UsageError(f"--version must be a version number, or 0 for the newest; got {options.version}")
    if options.api not in APIS:
        raise UsageError(f"--api must be one of {', '.join(APIS)}; got {options.api!r}")
    kind = options.input or ("jpeg" if options.api == "native" or options.image else "tensor")
    if kind not in INPUTS:
        raise UsageError(f"--input must be one of {', '.join(INPUTS)}; got {kind!r}")
    if kind in PIXELS and options.api == "native":
        raise UsageError("the native API takes encoded images only: use --input jpeg, or --api tfs or v2 "
                         f"for --input {kind}")  # fmt: skip
    if kind in PIXELS and options.image is not None:
        raise UsageError(f"--image is sent as encoded bytes, with --input jpeg; --input {kind} sends "
                         "random pixels")  # fmt: skip
    if options.inprocess and options.repository is None:
        raise UsageError("--inprocess loads the model from a repository: add --repository REPO (the one "
                         "the server serves)")  # fmt: skip
    image = None
    if options.image is not None:
        try:
            image = options.image.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --image {options.image}: {exc.strerror or exc}") from None
    if options.json is not None:
        report.check_output(options.json, "--json")
    if options.plot is not None:
        report.check_plot(options.plot)
    load = Load(concurrency=options.concurrency if options.rate is None else None, rate=options.rate,
                warmup_s=options.warmup_s, duration_s=options.duration_s,
                max_requests=options.max_requests)  # fmt: skip
    if load.concurrency is None and load.rate is None:
        load = Load(1, None, load.warmup_s, load.duration_s, load.max_requests)
    return kind, load, image


def _served_version(options: BenchOptions) -> VersionInfo:
    """The version the server answers with (ListModels): its input size, backend and providers."""
    try:
        with Client(
            options.server, timeout_s=options.timeout_s, tls=options.tls, token=options.token
        ) as client:
            models = client.list_models()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise UsageError(f"no server answers at {options.server} ({code.name}: {details}); start one "
                             "with `tlserve serve --repository REPO` (gRPC on localhost:8500), or give "
                             "its address with --server HOST:PORT") from None  # fmt: skip
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise UsageError(f"{options.server} does not answer tlserve.v1 ListModels: is it a tlserve "
                             "server?") from None  # fmt: skip
        raise TlserveError(f"{options.server}: ListModels failed: {code.name}: {details}") from None
    versions = models.get(options.model)
    if versions is None:
        raise UsageError(f"model {options.model!r} is not served at {options.server} (it serves: "
                         f"{', '.join(sorted(models)) or 'nothing'})")  # fmt: skip
    states = ", ".join(f"v{v.version} {v.state}" for v in versions) or "no versions"
    available = [v for v in versions if v.state == "AVAILABLE"]
    if options.version:
        available = [v for v in available if v.version == options.version]
    if not available:
        wanted = f"version {options.version}" if options.version else "a version"
        raise UsageError(f"{options.model} has no {wanted} serving at {options.server} ({states})")
    return max(available, key=lambda v: v.version)


async def _bench_server(options: BenchOptions, request: Request, load: Load, progress: TextIO | None) -> Run:
    async with open_channel(options.server, options.tls) as channel:
        await probe_server(channel, request, options.batch_size, options.timeout_s, options.metadata)
        call = grpc_call(channel, request, options.timeout_s, options.metadata)
        return await measure("server", call, load, options.batch_size, progress)


async def _bench_inprocess(
    baseline: Baseline,
    payload: Payload,
    size: tuple[int, int],
    load: Load,
    batch: int,
    progress: TextIO | None,
) -> Run:
    with ThreadPoolExecutor(1, thread_name_prefix="bench-onnxruntime") as executor:
        call = inprocess_call(baseline, payload, *size, executor)
        return await measure("in-process", call, load, batch, progress)


def _header(
    options: BenchOptions,
    served: VersionInfo,
    kind: str,
    payload: Payload,
    load: Load,
    baseline: Baseline | None,
) -> list[str]:
    """What was measured, how, and against what: the lines above the table."""
    if kind in PIXELS:
        sent = f"random {'float32' if kind == 'tensor' else 'uint8'} pixels"
    else:
        sent = f"{options.image or 'a generated JPEG'}, {len((payload.images or [b''])[0])} bytes"
    mode = f"closed loop, concurrency {load.concurrency}"
    if load.rate is not None:
        mode = f"open loop, {load.rate:g} requests/s scheduled (latency from the scheduled time)"
    lines = [
        f"{options.model} v{served.version} at {options.server}: {served.height}x{served.width}, "
        f"{served.backend} on {', '.join(served.providers)}, {served.artifact}",
        f"{options.api} API, {kind} input ({sent}), batch {options.batch_size}; {mode}",
        f"{load.duration_s:g} s measured after {load.warmup_s:g} s warm-up, at most {load.max_requests} "
        "requests",
    ]
    if baseline is not None:
        lines.append(f"in-process: {baseline.artifact} on {', '.join(baseline.providers)}, one session, "
                     "one thread")  # fmt: skip
    return lines


def _document(
    options: BenchOptions, kind: str, load: Load, served: VersionInfo, runs: list[Run],
    baseline: Baseline | None, ratio: dict[str, float | None] | None,
) -> dict[str, Any]:  # fmt: skip
    """Everything --json writes: settings, model, machine, each run's figures, the ratios."""
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()
                if k not in ("tls", "token")}  # fmt: skip  # NOTE: never keys or tokens in a report
    settings["tls"] = options.tls is not None
    settings["token"] = options.token is not None
    inprocess = None
    if baseline is not None:
        inprocess = {**runs[1].summary.to_dict(), "cpu_percent": runs[1].cpu_percent,
                     "artifact": baseline.artifact, "providers": baseline.providers}  # fmt: skip
    return {
        "tlserve_bench": JSON_SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {**settings, "input": kind, "concurrency": load.concurrency, "rate": load.rate,
                     "loop": "closed" if load.rate is None else "open"},
        "model": {"name": options.model, **{k: v for k, v in asdict(served).items() if k != "labels"}},
        "machine": report.machine(),
        "server": {**runs[0].summary.to_dict(), "client_cpu_percent": runs[0].cpu_percent},
        "inprocess": inprocess,
        "ratios": ratio,
    }  # fmt: skip


def run(options: BenchOptions, out: TextIO | None = None, progress: TextIO | None = None) -> int:
    """Measure, print the table to ``out`` (stdout), write the files; TlserveError if nothing succeeded.
    ``progress``: where the progress line goes (None: nowhere)."""
    out = out or sys.stdout
    kind, load, image = _check(options)
    served = _served_version(options)
    size = (served.height, served.width)
    local = None
    if options.inprocess:
        assert options.repository is not None
        version_dir, manifest = local = read_manifest(options.repository, options.model, served.version)
        if manifest.image_size != size:
            raise UsageError(f"the server's {options.model} v{served.version} takes {size[0]}x{size[1]} "
                             f"images, {version_dir}'s manifest says {manifest.image_size[0]}x"
                             f"{manifest.image_size[1]}: point --repository at the repository the server "
                             "serves")  # fmt: skip
    payload = make_payload(kind, options.batch_size, *size, image)
    request = build_request(options.api, options.model, options.version, payload)
    runs = [asyncio.run(_bench_server(options, request, load, progress))]
    baseline = None
    if local is not None:
        baseline = open_session(*local)
        runs.append(
            asyncio.run(_bench_inprocess(baseline, payload, size, load, options.batch_size, progress))
        )
    ratio = ratios(runs[0].summary, runs[1].summary) if baseline is not None else None
    lines = _header(options, served, kind, payload, load, baseline)
    print("\n".join([*lines, "", report.table(runs, ratio, open_loop=load.rate is not None)]), file=out)
    if options.json is not None:
        text = json.dumps(_document(options, kind, load, served, runs, baseline, ratio), indent=2) + "\n"
        report.atomic_write(options.json, lambda file: file.write(text.encode()))
    if options.plot is not None:
        report.write_plot(options.plot, runs, lines[0])
    if runs[0].summary.ok == 0:
        codes = ", ".join(f"{c} {n}" for c, n in runs[0].summary.errors.items()) or "no request measured"
        raise TlserveError(f"no request to the server succeeded ({codes})")
    return 0
