"""Prometheus metrics of the server, on an injected registry (no global state).

The core records which model and version a request used in a context variable, so that the one
interceptor that times every call can label it without knowing any API.
"""

from __future__ import annotations

import contextvars

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

# Sub-millisecond up to 10 s: image models answer in ms, a cold or overloaded one in seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

current_model: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "current_model", default=("", "")
)
"""(model, version) of the request being served, set by the core."""


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = ["model", "version", "api", "method", "code"]
        self.request_duration = Histogram(
            "tlserve_request_duration_seconds", "Time from receiving a call to answering it.",
            labels, registry=self.registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.requests = Counter(
            "tlserve_requests", "Calls answered, by status code.", labels, registry=self.registry
        )
        self.in_flight = Gauge(
            "tlserve_in_flight_requests", "Calls being handled.", ["api"], registry=self.registry
        )
        self.batch_size = Histogram(
            "tlserve_batch_size", "Images per backend call.", ["model", "version"],
            registry=self.registry, buckets=BATCH_BUCKETS,
        )  # fmt: skip
        self.compute_duration = Histogram(
            "tlserve_compute_duration_seconds", "Backend time per batch (including the thread hand-off).",
            ["model", "version"], registry=self.registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.model_ready = Gauge(
            "tlserve_model_ready", "1 while a model has a version serving.", ["model"], registry=self.registry
        )

    def observe_batch(self, model: str, version: int, size: int, seconds: float) -> None:
        self.batch_size.labels(model, str(version)).observe(size)
        self.compute_duration.labels(model, str(version)).observe(seconds)

    def set_ready(self, model: str, ready: bool) -> None:
        self.model_ready.labels(model).set(1 if ready else 0)
