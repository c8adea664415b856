"""Prometheus metrics of the server, on an injected registry (no global state).

Names follow Prometheus conventions: ``tlserve_`` prefix, ``_seconds`` histograms, ``_total``
counters. Labels stay few: model, version, api, method, code (and backend/provider on compute).
The core records which model and version a request used in a context variable, so that the one
interceptor that times every call can label it without knowing any API; a request rejected before
it reaches a model is counted with empty model and version.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from tlserve.service.monitor import ClassWindow, Reference, js_divergence, minimum, window

if TYPE_CHECKING:
    from tlserve.service.backends.base import Outputs

log = logging.getLogger("tlserve.metrics")

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
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
NOVELTY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
"""In units of each class's 95th-percentile training distance: 1.0 is the training edge."""

current_model: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "current_model", default=("", "")
)
"""(model, version) of the request being served, set by the core."""


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        request = ["model", "version", "api", "method", "code"]
        self.request_duration = Histogram(
            "tlserve_request_duration_seconds", "Time from receiving a call to answering it.",
            request, registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.requests = Counter("tlserve_requests", "Calls answered, by status code.", request, registry=r)
        self.in_flight = Gauge("tlserve_in_flight_requests", "Calls being handled.", ["api"], registry=r)
        self.connections_refused = Counter(
            "tlserve_connections_refused", "Connections answered 503 and closed before their request was "
            "read (REST: past max_http_connections).", ["api"], registry=r,
        )  # fmt: skip
        version = ["model", "version"]
        self.queue_wait = Histogram(
            "tlserve_queue_wait_seconds", "Time a request waited for its batch to start.",
            version, registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.preprocess = Histogram(
            "tlserve_preprocess_seconds", "Decoding and resizing the images of one request.",
            version, registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.compute = Histogram(
            "tlserve_compute_seconds", "Backend time per batch, thread hand-off included.",
            [*version, "backend", "provider"], registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_size = Histogram(
            "tlserve_batch_size", "Images per backend call.", version, registry=r, buckets=BATCH_BUCKETS
        )
        self.queue_depth = Gauge("tlserve_queue_depth", "Requests waiting for a batch.", version, registry=r)
        self.queue_capacity = Gauge(
            "tlserve_queue_capacity", "Requests that may wait before RESOURCE_EXHAUSTED.", version, registry=r
        )
        self.load_duration = Histogram(
            "tlserve_model_load_seconds", "Loading and warming up a model version.",
            ["model"], registry=r, buckets=LOAD_BUCKETS,
        )  # fmt: skip
        self.load_failures = Counter(
            "tlserve_model_load_failures", "Model versions that failed to load.", ["model"], registry=r
        )
        self.model_info = Gauge(
            "tlserve_model_info", "1 for each version serving, with what serves it.",
            ["model", "version", "backend", "providers", "artifact"], registry=r,
        )  # fmt: skip
        self.model_ready = Gauge(
            "tlserve_model_ready", "1 while a model has a version serving.", ["model"], registry=r
        )
        self.repository_errors = Counter(
            "tlserve_repository_errors", "Failed listings of a bucket, downloads of a version from it.",
            ["operation"], registry=r,
        )  # fmt: skip
        for operation in ("list", "download"):  # NOTE: at 0 from the start: a first failure is an increase
            self.repository_errors.labels(operation)
        self.repository_up = Gauge(
            "tlserve_repository_up", "1 while the last scan of the repository succeeded.", registry=r
        )
        self.predictions = Counter(
            "tlserve_predictions", "Images answered, by their top-1 class.", [*version, "class"], registry=r
        )
        self.confidence = Histogram(
            "tlserve_prediction_confidence", "The top-1 (calibrated) score of each image answered.",
            version, registry=r, buckets=CONFIDENCE_BUCKETS,
        )  # fmt: skip
        self.novelty = Histogram(
            "tlserve_prediction_novelty", "Distance of each image's embedding to the nearest training "
            "centroid, in units of that class's 95th-percentile training distance (1 = the training edge).",
            version, registry=r, buckets=NOVELTY_BUCKETS,
        )  # fmt: skip
        self.class_drift = Gauge(
            "tlserve_class_drift", "Jensen-Shannon divergence (base 2, 0..1) of the top-1 classes of the "
            "last images served (1000, or 50 per class) from the training class priors; NaN until enough.",
            version, registry=r,
        )  # fmt: skip
        self.captures = Counter(
            "tlserve_captures", "Images a capture trigger picked, by what became of them: written, "
            "budget (capture_max_bytes/files reached), queue_full (the writer was behind), failed (disk "
            "error).", ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.capture_bytes = Gauge(
            "tlserve_capture_bytes", "Bytes under capture_dir (counted at start and every 30 s once the "
            "budget is reached, plus what the server wrote).", registry=r,
        )  # fmt: skip
        self.capture_files = Gauge(
            "tlserve_capture_files", "Images under capture_dir (counted likewise).", registry=r
        )
        self.failed_versions = Gauge(
            "tlserve_model_failed_versions", "Versions on disk that failed to load (not serving).",
            ["model"], registry=r,
        )  # fmt: skip

    def model_seen(self, model: str) -> None:
        """Create a model's series at 0 when it first appears, so that a first failure is an increase."""
        self.model_ready.labels(model).set(0)
        self.load_failures.labels(model)
        self.failed_versions.labels(model).set(0)

    def model_gone(self, model: str) -> None:
        for metric in (self.model_ready, self.load_failures, self.failed_versions, self.load_duration):
            with contextlib.suppress(KeyError):
                metric.remove(model)

    def set_ready(self, model: str, ready: bool) -> None:
        self.model_ready.labels(model).set(1 if ready else 0)

    def version(
        self, model: str, version: int, backend: str, providers: list[str], artifact: str
    ) -> VersionMetrics:
        return VersionMetrics(self, model, str(version), backend, providers, artifact)


class VersionMetrics:
    """One serving version's metrics, children bound once; ``remove()`` when it is unloaded."""

    def __init__(
        self, metrics: Metrics, model: str, version: str, backend: str, providers: list[str], artifact: str
    ) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self._info = (model, version, backend, ",".join(providers), artifact)
        self._compute = (model, version, backend, providers[0] if providers else "")
        self.wait = metrics.queue_wait.labels(*self._labels)
        self.preprocess = metrics.preprocess.labels(*self._labels)
        self.compute = metrics.compute.labels(*self._compute)
        self.batch_size = metrics.batch_size.labels(*self._labels)
        self.depth = metrics.queue_depth.labels(*self._labels)
        self.confidence = metrics.confidence.labels(*self._labels)
        self._class_labels: list[tuple[str, ...]] = []
        self._classes: list[Any] = []
        self._reference: Reference | None = None
        self._window: ClassWindow | None = None
        self._minimum = 0

    def watch(self, labels: list[str], reference: Reference | None) -> None:
        """Count predictions per class of ``labels``; with ``reference``, also novelty and drift."""
        self._class_labels = [(*self._labels, label) for label in labels]
        self._classes = [self._metrics.predictions.labels(*labels_) for labels_ in self._class_labels]
        if reference is not None and len(reference.priors) == len(labels):
            self._reference = reference
            self._window = ClassWindow(len(labels), window(len(labels)))
            self._minimum = minimum(len(labels))
            self.novelty = self._metrics.novelty.labels(*self._labels)
            self.drift = self._metrics.class_drift.labels(*self._labels)
            self.drift.set_function(self._drift)  # NOTE: computed when scraped, not per request

    def predicted(self, outputs: Outputs, novelty: np.ndarray | None = None) -> None:
        """Record one request's answers and their novelty (after it was answered: never raises)."""
        try:
            self._predicted(outputs, novelty)
        except Exception:  # NOTE: monitoring must never fail or slow a request with an error
            log.exception("recording prediction metrics failed")

    def _predicted(self, outputs: Outputs, novelty: np.ndarray | None) -> None:
        probabilities = outputs.probabilities
        top = probabilities.argmax(axis=1)
        for score in probabilities[np.arange(len(top)), top].tolist():
            self.confidence.observe(score)
        if self._classes:
            for index in top.tolist():
                self._classes[index].inc()
        if self._reference is None or self._window is None:
            return
        if novelty is None and outputs.embedding is not None:
            novelty = self._reference.novelty(outputs.embedding)
        if novelty is not None:
            for value in novelty.tolist():
                self.novelty.observe(value)
        self._window.add(top)

    def _drift(self) -> float:
        """The class drift now (NaN until ``minimum`` images); on the scraping thread, from a copy."""
        window, reference = self._window, self._reference
        if window is None or reference is None or window.seen < self._minimum:
            return math.nan
        try:
            return js_divergence(window.distribution(), reference.priors)
        except Exception:  # NOTE: an error here would fail the whole scrape
            log.exception("computing the class drift failed")
            return math.nan

    def serving(self, capacity: int) -> None:
        self._metrics.model_info.labels(*self._info).set(1)
        self._metrics.queue_capacity.labels(*self._labels).set(capacity)

    # the batcher's observer interface
    def waited(self, seconds: float) -> None:
        self.wait.observe(seconds)

    def computed(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.compute.observe(seconds)

    def queued(self, depth: int) -> None:
        self.depth.set(depth)

    def remove(self) -> None:
        """Drop this version's series: an unloaded version should not be scraped as if alive."""
        m = self._metrics
        per_version = (m.queue_capacity, m.queue_depth, m.queue_wait, m.preprocess, m.batch_size,
                       m.confidence, m.novelty, m.class_drift)  # fmt: skip
        removable = [(m.model_info, self._info), (m.compute, self._compute)]
        removable += [(metric, self._labels) for metric in per_version]
        removable += [(m.predictions, labels) for labels in self._class_labels]
        for metric, labels in removable:
            with contextlib.suppress(KeyError):  # never set, or already removed
                metric.remove(*labels)
