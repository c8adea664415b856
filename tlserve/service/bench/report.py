"""What a bench run shows: the table it prints, the machine it ran on, the JSON and PNG files it writes.

Files are written beside their destination under a hidden temporary name and renamed into place, so
an interrupted or failed run leaves either the whole file or nothing.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from tlserve.errors import UsageError
from tlserve.service.bench.load import Run
from tlserve.service.bench.stats import OK, Records, Summary

VERSIONS_OF = ("tlserve", "onnxruntime", "onnxruntime-gpu", "grpcio", "protobuf", "numpy")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, cores, platform and the versions of the libraries that decide the figures."""
    cpu = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {}
    for name in VERSIONS_OF:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}  # fmt: skip


def table(runs: list[Run], ratios: dict[str, float | None] | None, open_loop: bool) -> str:
    """Side by side, one column per run, and the server/in-process ratio of p50 and throughput; the
    client's lateness to its schedule in an open loop (a closed loop sends when it is due)."""
    rows: list[tuple[str, Callable[[Summary], float | int | None], str, str]] = [
        ("requests", lambda s: s.requests, "d", ""),
        ("errors", lambda s: s.error_count, "d", ""),
        ("requests/s", lambda s: s.requests_per_s, ".1f", "throughput"),
        ("images/s", lambda s: s.images_per_s, ".1f", ""),
        *((f"latency {k} (ms)", (lambda s, k=k: s.latency_ms.get(k)), ".2f", "p50" if k == "p50" else "")
          for k in ("min", "mean", "p50", "p90", "p99", "p99.9", "max")),
    ]  # fmt: skip
    if open_loop:
        rows.append(("send lag p99 (ms)", lambda s: s.send_lag_ms.get("p99"), ".2f", ""))
    header = f"{'':<20}" + "".join(f"{run.name:>12}" for run in runs) + ("     ratio" if ratios else "")
    lines = [header]
    for label, value, spec, ratio in rows:
        cells = [value(run.summary) for run in runs]
        line = f"{label:<20}" + "".join(f"{'-' if c is None else format(c, spec):>12}" for c in cells)
        if ratios and ratio:
            figure = ratios.get(ratio)
            line += f"{'-' if figure is None else format(figure, '.2f'):>10}"
        lines.append(line)
    lines.append(f"{'bench CPU (% core)':<20}" + "".join(f"{run.cpu_percent:>12.0f}" for run in runs))
    for run in runs:
        if run.summary.errors:
            codes = ", ".join(f"{code} {count}" for code, count in run.summary.errors.items())
            lines.append(f"{run.name} errors by code: {codes}")
    return "\n".join(lines)


def check_output(path: Path, flag: str) -> None:
    """UsageError unless a file can be created at ``path`` (tried for real: permissions can lie to root)."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {path.parent}: {exc.strerror or exc}") from None


def check_plot(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG image: give a FILE.png; got {path}")
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install matplotlib (or tlserve[train])")
    check_output(path, "--plot")


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write`` into a hidden temporary file beside ``path``, then rename it into place."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # NOTE: mkstemp makes it private; a report is not
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _latencies_ms(records: Records, ok: bool) -> tuple[np.ndarray, np.ndarray]:
    """(due time, latency ms) of every request that succeeded (``ok``) or failed."""
    due, done = np.asarray(records.due), np.asarray(records.done)
    chosen = np.asarray([(c == OK) == ok for c in records.codes], dtype=bool)
    return due[chosen], (done[chosen] - due[chosen]) * 1000


def write_plot(path: Path, runs: list[Run], title: str) -> None:
    """Latency histogram and CDF of the measured requests, and every request's latency over time."""
    from matplotlib.figure import Figure  # NOTE: no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(15, 4.6), layout="constrained")
    histogram, cdf, over_time = figure.subplots(1, 3)
    for run, color in zip(runs, ("tab:blue", "tab:orange"), strict=False):
        due, latency = _latencies_ms(run.records, ok=True)
        measured = latency[due >= run.plan.measured_from]
        if measured.size:
            low, high = max(float(measured.min()), 1e-3), float(measured.max())
            bins = np.geomspace(low, high * 1.001 if high > low else low * 1.1, 50)
            histogram.hist(measured, bins=bins, color=color, alpha=0.6, label=run.name)
            ordered = np.sort(measured)
            cdf.plot(ordered, np.arange(1, ordered.size + 1) / ordered.size, color=color, label=run.name)
        over_time.scatter(due - run.plan.start, latency, s=3, color=color, alpha=0.5, label=run.name)
        failed_due, failed = _latencies_ms(run.records, ok=False)
        if failed.size:
            over_time.scatter(failed_due - run.plan.start, failed, s=12, marker="x", color="tab:red",
                              label=f"{run.name} errors")  # fmt: skip
    over_time.axvspan(0, runs[0].plan.measured_from - runs[0].plan.start, color="0.9")
    histogram.set(xscale="log", xlabel="latency (ms)", ylabel="requests", title="latency histogram")
    cdf.set(xscale="log", xlabel="latency (ms)", ylabel="fraction of requests", title="latency CDF")
    cdf.grid(True, which="both", alpha=0.3)
    over_time.set(yscale="log", xlabel="seconds since start (grey: warm-up)", ylabel="latency (ms)",
                  title="latency over time")  # fmt: skip
    for axes in (histogram, cdf, over_time):
        axes.legend(loc="best", fontsize="small")
    for axis in (histogram.xaxis, cdf.xaxis, over_time.yaxis):
        log_ticks(axis)
    figure.suptitle(title)
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=100))


def log_ticks(axis: Any) -> None:
    """Labels at powers of ten (and 2 and 5 times them over less than 1.5 decades; where that leaves
    fewer than two in view, matplotlib's own even steps), written plainly ("2", "50", "0.1"): over a
    narrow range matplotlib labels its minor log ticks too, and they overlap. Call it once the data
    are plotted."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = sorted(axis.get_view_interval())
    narrow = low > 0 and high / low < 10**1.5
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())
