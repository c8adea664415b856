"""What a load run recorded, and its summary: latency percentiles, throughput, errors by status code.

Pure functions of the records, so that every figure the report prints can be checked by a test.
Only requests *due* after the warm-up count; latency runs from that due time (the schedule's in an
open loop), so a request that waited in the client behind a slow answer shows it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

OK = "OK"
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


class Outcome(NamedTuple):
    """What one call returns to the load generator."""

    code: str
    """"OK" or the gRPC status code's name (in-process: the exception's type)."""
    version: int = 0
    """The version that answered, where the call reads the answer (0: not read, or failed)."""
    kind: str = ""
    """Which request it was, where a run mixes several."""


@dataclass
class Records:
    """One entry per answered request, in the order answers came; times are ``time.perf_counter()``."""

    due: list[float] = field(default_factory=list)
    """When the request was meant to go: its send time in a closed loop, the schedule's in an open one."""
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    """"OK" or the gRPC status code's name (in-process: the exception's type)."""
    versions: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def add(self, due: float, sent: float, done: float, code: str, version: int = 0, kind: str = "") -> None:
        self.due.append(due)
        self.sent.append(sent)
        self.done.append(done)
        self.codes.append(code)
        self.versions.append(version)
        self.kinds.append(kind)

    def __len__(self) -> int:
        return len(self.done)

    def subset(self, indices: Iterable[int]) -> Records:
        """The records at ``indices``, in that order."""
        chosen = Records()
        for i in indices:
            chosen.add(
                self.due[i], self.sent[i], self.done[i], self.codes[i], self.versions[i], self.kinds[i]
            )
        return chosen


def count_codes(records: Records, since: float = -math.inf) -> Counter[str]:
    """Requests due at or after ``since``, by status code."""
    return Counter(c for c, d in zip(records.codes, records.due, strict=True) if d >= since)


def by_code(records: Records, since: float = -math.inf) -> dict[str, Any]:
    """Requests due at or after ``since``: their count, counts by status, and for each status seen
    the p50, p99 and max latency from the due time, in ms rounded to 0.01 (the reliability figures)."""
    codes = count_codes(records, since)
    out: dict[str, Any] = {"calls": sum(codes.values()), "codes": dict(sorted(codes.items()))}
    due, done = np.asarray(records.due, dtype=np.float64), np.asarray(records.done, dtype=np.float64)
    for code in out["codes"]:
        chosen = (due >= since) & np.asarray([c == code for c in records.codes], dtype=bool)
        ms = (done[chosen] - due[chosen]) * 1000
        out[code] = {"p50_ms": round(float(np.percentile(ms, 50)), 2),
                     "p99_ms": round(float(np.percentile(ms, 99)), 2),
                     "max_ms": round(float(ms.max()), 2)}  # fmt: skip
    return out


def percentiles(latencies_ms: np.ndarray) -> dict[str, float]:
    """p50, p90, p99, p99.9 by linear interpolation between closest ranks (numpy's default method);
    an empty dict for no values."""
    if latencies_ms.size == 0:
        return {}
    values = np.percentile(latencies_ms, list(PERCENTILES.values()))
    return {name: float(v) for name, v in zip(PERCENTILES, values, strict=True)}


@dataclass(frozen=True)
class Summary:
    requests: int
    """Requests due in the measured window (answered, with success or an error)."""
    ok: int
    errors: dict[str, int]
    """Failed requests by status code, most frequent first."""
    elapsed_s: float
    """From the end of the warm-up to the last answer of a measured request."""
    requests_per_s: float
    """Successful requests per second of ``elapsed_s``."""
    images_per_s: float
    latency_ms: dict[str, float]
    """Of successful requests, from their due time: min, mean, p50, p90, p99, p99.9, max."""
    send_lag_ms: dict[str, float]
    """How late the client sent, after the due time (open loop: > 0 when this client falls behind)."""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "ok": self.ok, "errors": self.error_count,
            "errors_by_code": dict(self.errors), "elapsed_s": self.elapsed_s,
            "requests_per_s": self.requests_per_s, "images_per_s": self.images_per_s,
            "latency_ms": dict(self.latency_ms), "send_lag_ms": dict(self.send_lag_ms),
        }  # fmt: skip


def summarize(records: Records, measured_from: float, batch_size: int) -> Summary:
    """The figures of the requests due at or after ``measured_from`` (the end of the warm-up)."""
    due = np.asarray(records.due, dtype=np.float64)
    done = np.asarray(records.done, dtype=np.float64)
    sent = np.asarray(records.sent, dtype=np.float64)
    measured = due >= measured_from
    codes = [c for c, m in zip(records.codes, measured, strict=True) if m]
    good = measured & np.asarray([c == OK for c in records.codes], dtype=bool)
    ok = int(good.sum())
    elapsed = float(done[measured].max() - measured_from) if measured.any() else 0.0
    latency = (done[good] - due[good]) * 1000
    latency_ms: dict[str, float] = {}
    if latency.size:
        latency_ms = {"min": float(latency.min()), "mean": float(latency.mean()), **percentiles(latency),
                      "max": float(latency.max())}  # fmt: skip
    lag = (sent[measured] - due[measured]) * 1000
    send_lag_ms = {}
    if lag.size:
        send_lag_ms = {"p50": float(np.percentile(lag, 50)), "p99": float(np.percentile(lag, 99)),
                       "max": float(lag.max())}  # fmt: skip
    return Summary(
        requests=len(codes),
        ok=ok,
        errors=dict(Counter(c for c in codes if c != OK).most_common()),
        elapsed_s=elapsed,
        requests_per_s=ok / elapsed if elapsed > 0 else 0.0,
        images_per_s=ok * batch_size / elapsed if elapsed > 0 else 0.0,
        latency_ms=latency_ms,
        send_lag_ms=send_lag_ms,
    )


def ratios(server: Summary, baseline: Summary) -> dict[str, float | None]:
    """Server over in-process: p50 latency (1.0 = no cost) and throughput (1.0 = all of it)."""
    p50, base_p50 = server.latency_ms.get("p50"), baseline.latency_ms.get("p50")
    return {
        "p50": p50 / base_p50 if p50 is not None and base_p50 else None,
        "throughput": server.requests_per_s / baseline.requests_per_s if baseline.requests_per_s else None,
    }
