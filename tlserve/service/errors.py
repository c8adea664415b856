"""Errors the serving core raises on purpose, each carrying the status a client receives.

ServiceError                    the message is safe to send to the client
├── InvalidArgument             the request is malformed or does not fit the model
├── NotFound                    unknown model, version or version label
├── ResourceExhausted           a queue is full (the request was rejected at once, not queued)
├── DeadlineExceeded            the deadline passed before the request reached the model
├── Unavailable                 the model has no version ready, or the server is shutting down
├── Unauthenticated             bearer tokens are required and the call has none or a wrong one
├── Cancelled                   the client went away before its request was read
└── Internal                    a backend failed; the client gets a generic message and a request id

The core knows nothing of gRPC: ``Code`` names match gRPC's status codes, and the transports map them
(tlserve.service.transport.errors). Anything that is not a ServiceError is a bug or a backend failure and is
sent as INTERNAL with a generic message; the traceback goes to the server log only.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    CANCELLED = "CANCELLED"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class ServiceError(Exception):
    code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = Code.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = Code.NOT_FOUND


class ResourceExhausted(ServiceError):
    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = Code.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    code = Code.UNAVAILABLE


class Unauthenticated(ServiceError):
    code = Code.UNAUTHENTICATED


class Cancelled(ServiceError):
    code = Code.CANCELLED


class Internal(ServiceError):
    code = Code.INTERNAL


_CHAIN = 32
"""At most this many exceptions of a chain (``__context__`` and ``__cause__``) are released."""


def release(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and of the exceptions it was raised while handling, so that
    the frames they passed through (a rejected request's message, its images, its arrays) are freed
    with their callers instead of living as long as the exception does, until the garbage collector
    happens to run. Frames are never cleared: a frame on a traceback may belong to a suspended
    coroutine (a batcher's loop that awaited the failed batch), and clearing it would kill it."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(seen) < _CHAIN:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [e for e in (current.__context__, current.__cause__) if e is not None]
