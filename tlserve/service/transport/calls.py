"""What every call of every API shares, for the gRPC interceptor (transport.errors) and the REST
middleware (transport.rest) alike: its request id, the in-flight gauge, the request metrics and the
access-log line (``CallObserver``), and the status each error code gets (``STATUS``, one table).

A ServiceError's message goes to the client; anything else is INTERNAL with a generic message that
carries the request id, and its traceback goes to the server log under the same id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from tlserve.service import logs
from tlserve.service.errors import Code, ServiceError
from tlserve.service.metrics import Metrics, current_model

log = logging.getLogger(__name__)
STATUS: dict[Code, tuple[grpc.StatusCode, int]] = {
    Code.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    Code.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404),
    Code.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    Code.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    Code.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503),
    Code.INTERNAL: (grpc.StatusCode.INTERNAL, 500),
    Code.CANCELLED: (grpc.StatusCode.CANCELLED, 499),
    Code.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 401),
}
"""Each error code's gRPC status and HTTP status (499: nginx's "client closed request")."""


def generic_message(request_id: str) -> str:
    """What a client is told of a failure that is not its own (the log has the details)."""
    return f"internal error (request id {request_id}); the server log has the details"


class Call:
    """One call in progress: ``code`` is what the metrics and the access log will say of it."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.code = "OK"

    def failed(self, exc: BaseException, where: str) -> tuple[Code, str]:
        """The code and client message of a call that raised ``exc``; INTERNAL ones are logged."""
        if isinstance(exc, ServiceError) and exc.code is not Code.INTERNAL:
            self.code = exc.code.name
            log.debug("%s %s [%s]: %s", where, self.code, self.request_id, exc.message)
            return exc.code, exc.message
        self.code = Code.INTERNAL.name
        if isinstance(exc, ServiceError):  # a backend's failure, said on purpose: no traceback
            log.error("%s failed [request id %s]: %s", where, self.request_id, exc.message)
        else:
            log.error("%s failed [request id %s]", where, self.request_id, exc_info=exc)
        return Code.INTERNAL, generic_message(self.request_id)


class CallObserver:
    def __init__(self, metrics: Metrics, access_log: bool) -> None:
        self.metrics = metrics
        self.access_log = access_log

    @contextmanager
    def call(self, api: str, method: str, request_id: str, what: str = "") -> Iterator[Call]:
        """Observe one call of ``method`` of ``api`` ("tfs", "oip", "native", "rest"); ``what``
        adds to the access-log line (REST: the HTTP method and path)."""
        logs.request_id.set(request_id)
        current_model.set(("", ""))
        call = Call(request_id)
        gauge = self.metrics.in_flight.labels(api)
        gauge.inc()
        start = time.perf_counter()
        try:
            yield call
        finally:
            gauge.dec()
            model, version = current_model.get()
            elapsed = time.perf_counter() - start
            labels = (model, version, api, method, call.code)
            self.metrics.request_duration.labels(*labels).observe(elapsed)
            self.metrics.requests.labels(*labels).inc()
            if self.access_log:
                logs.access.info("%s %s model=%s version=%s code=%s %.2f ms", api, what or method,
                                 model or "-", version or "-", call.code, elapsed * 1000)  # fmt: skip
