"""What both REST APIs share below their routes: the body, its JSON, JSON numbers, aiohttp's own log
and runner.

Every way a client can get these wrong — a corrupt gzip body, a disconnect mid-body, JSON nested
past Python's recursion limit, a lone UTF-16 surrogate in a string, an integer too large for a float
— is a ServiceError here (INVALID_ARGUMENT, or CANCELLED for a client that went away), never an
INTERNAL with a traceback.

What one body may cost is bounded before it is paid: its declared size (413 before a byte is read, and
before ``100 Continue``), its size once decompressed and the ratio of that to what was sent (413),
the time it takes to arrive (408), the bytes it holds in the request budget, and the number of JSON
values in it (counted at C speed before parsing: 400). A large body is parsed off the event loop in a
way that lets the loop keep running (``parse_json``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError

from tlserve.service.errors import Cancelled, InvalidArgument, ResourceExhausted
from tlserve.service.settings import ServerSettings
from tlserve.service.transport.budget import Hold
from tlserve.service.transport.offloop import off_loop

T = TypeVar("T")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
LARGE_BODY_BYTES = 1 << 20
"""Bodies from this size are parsed off the event loop; smaller ones take at most milliseconds."""
RATIO_FLOOR_BYTES = 1 << 20
"""A compressed body may always decompress to this much, whatever its ratio."""
JSON_VALUE_BYTES = 32
"""About what one parsed JSON number costs: a float (24 bytes) and its place in a list (8)."""
CLIENT_FAULTS = (HttpProcessingError, web.RequestPayloadError, ConnectionError)
"""What aiohttp raises for a malformed request or a client that went away."""


def one_line(exc: BaseException) -> str:
    """aiohttp's message of ``exc`` on one line (it spreads them over several, with a caret)."""
    cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) and exc.__cause__ else exc
    text = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    parts = [line.strip() for line in str(text).splitlines()]
    return " ".join(p for p in parts if p.strip("^"))[:200] or type(exc).__name__


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout_s: float
    max_ratio: float


LIMITS = web.AppKey("body_limits", BodyLimits)
SHARE = web.RequestKey("budget_share", Hold)
"""The request's share of the request budget, held by the middleware for the whole request."""


def too_large(message: str) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(0, 0, text=message)


def check_declared_size(request: web.Request) -> None:
    """413 for a Content-Length above the limit, before anything is read."""
    limit = request.app[LIMITS].max_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(
            f"the body declares {declared} bytes, above the limit of {limit} (setting max_message_bytes)"
        )


async def read_body(request: web.Request) -> bytes:
    """The whole body, decompressed, held in the request's budget share. 413 above the limits, 408
    when it takes too long, ResourceExhausted when no room is found in the budget in time."""
    limits, share = request.app[LIMITS], request[SHARE]
    check_declared_size(request)
    declared = request.content_length
    encoded = bool(request.headers.get("Content-Encoding"))
    chunks: list[bytes] = []
    size = 0
    reading = False
    try:
        async with asyncio.timeout(limits.timeout_s):
            await share.resize(limits.max_bytes if declared is None or encoded else declared)
            reading = True
            await _continue(request)
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise too_large(f"the body is above the limit of {limits.max_bytes} bytes "
                                    "(setting max_message_bytes)")  # fmt: skip
                sent = request.content.total_compressed_bytes
                if sent and size > max(RATIO_FLOOR_BYTES, limits.max_ratio * sent):
                    raise too_large(f"the body decompresses to more than {limits.max_ratio:g} times the "
                                    f"{sent} bytes sent (setting max_decompression_ratio)")  # fmt: skip
                chunks.append(chunk)
    except TimeoutError:
        if not reading:
            raise ResourceExhausted(f"no room within {limits.timeout_s:g} s to read the body (setting "
                                    "max_inflight_request_bytes); retry later") from None  # fmt: skip
        raise web.HTTPRequestTimeout(text=f"the body did not arrive within {limits.timeout_s:g} s "
                                     "(setting body_timeout_s)") from None  # fmt: skip
    except web.RequestPayloadError as exc:  # a corrupt gzip or deflate body, a bad chunk
        raise InvalidArgument(f"the request body cannot be read: {one_line(exc)}") from None
    except ConnectionError:
        raise Cancelled("the client disconnected before sending the whole request body") from None
    body = b"".join(chunks)
    del chunks
    await share.resize(len(body))
    return body


async def continue_later(request: web.Request) -> None:
    """The routes' expect handler: ``100 Continue`` is sent by ``read_body`` once the request is let
    in and its body is really wanted, not before the token and the declared size are checked."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11 and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect}")


async def _continue(request: web.Request) -> None:
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        # NOTE: what aiohttp's default expect handler does, deferred to here
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def _lone_surrogate(value: Any) -> bool:
    """Whether a parsed JSON value holds a string that is not valid Unicode (iteratively: values
    nest as deep as the JSON parser allowed, too deep for a recursive walk)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def max_json_values(settings: ServerSettings, image_size: tuple[int, int]) -> int:
    """The JSON values of the largest request a model of ``image_size`` takes: ``max_batch_size``
    images, each height x width x 3 numbers in height x width + height + 1 lists, and 256 more."""
    height, width = image_size
    return settings.max_batch_size * (height * width * 4 + height + 1) + 256


def json_values(data: bytes) -> int:
    """At least the number of values in JSON text ``data``, counted without parsing it (at C speed:
    60 MB in 0.06 s): every value but the first of an array or object follows a comma, and an
    array or object opens with a bracket (characters inside strings only make the bound higher)."""
    return data.count(b",") + data.count(b"[") + data.count(b"{") + 1


async def parse_json(data: bytes, max_values: int, share: Hold) -> dict[str, Any]:
    """The body as a JSON object whose strings are all valid Unicode. Refused unparsed when it could
    hold more than ``max_values`` values; what parsing it costs is added to ``share`` first. A large
    body is parsed in a thread, with a Python-level hook per number: C code never gives up the GIL
    by itself, so ``json.loads`` in a thread would freeze the event loop as long as it ran inline;
    each hook is a point where the loop gets its turn (5 M numbers: the loop was frozen for the whole
    0.7-1.3 s; now its ticks stay under 40 ms, for about a third more parsing time)."""
    values = json_values(data)
    if values > max_values:
        raise InvalidArgument(f"the body holds up to {values} JSON values; a request to this model carries "
                              f"at most {max_values} (setting max_batch_size)")  # fmt: skip
    if not share.grow_now(share.size + JSON_VALUE_BYTES * values):
        raise ResourceExhausted(f"no room to parse {values} JSON values now (setting "
                                "max_inflight_request_bytes); retry later")  # fmt: skip
    return await off_loop(len(data) >= LARGE_BODY_BYTES, _parse_json, data)


def _int(text: str) -> int:  # NOTE: Python-level on purpose (see parse_json)
    return int(text)


def _float(text: str) -> float:
    return float(text)


def _parse_json(data: bytes) -> dict[str, Any]:
    large = len(data) >= LARGE_BODY_BYTES
    try:
        parsed = json.loads(data, parse_float=_float, parse_int=_int) if large else json.loads(data)
    except RecursionError:
        raise InvalidArgument("the request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # NOTE: also invalid UTF-8 and integers of over 4,300 digits
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument("the request body must be a JSON object")
    # NOTE: json accepts "\ud800", which no string can be encoded with; only an escape makes one
    if _SURROGATE_ESCAPE.search(data) and _lone_surrogate(parsed):
        raise InvalidArgument("the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff) in a "
                              "string; strings must be valid Unicode")  # fmt: skip
    return parsed


def json_numbers(data: Any, message: str) -> np.ndarray:
    """Nested JSON lists of numbers as float32; InvalidArgument(message) when they are not numbers,
    ragged, or hold an integer too large for any float. A list of rows is converted one row at a time
    (one image of a batch) into one array, so that in a thread the event loop gets its turn in
    between; a flat list of numbers in one call."""
    # NOTE: a number beyond float32 becomes inf, which the request checks refuse as not finite
    with np.errstate(over="ignore"):
        return _to_float32(data, message)


def _to_float32(data: Any, message: str) -> np.ndarray:
    try:
        if isinstance(data, list) and len(data) > 1 and isinstance(data[0], list):
            first = np.asarray(data[0], dtype=np.float32)
            array = np.empty((len(data), *first.shape), dtype=np.float32)
            array[0] = first
            for i in range(1, len(data)):
                row = np.asarray(data[i], dtype=np.float32)
                if row.shape != first.shape:
                    raise ValueError("ragged")
                array[i] = row
            return array
        return np.asarray(data, dtype=np.float32)  # NOTE: flat numbers (tritonclient's JSON): one call
    except (ValueError, TypeError, OverflowError):
        raise InvalidArgument(message) from None


def http2_preface(error: BaseException) -> bool:
    """Whether aiohttp refused an HTTP/2 connection preface (``PRI * HTTP/2.0``: a gRPC client)."""
    # NOTE: llhttp's own error (aiohttp's C parser); the pure-Python parser (AIOHTTP_NO_EXTENSIONS)
    # calls it a bad URL "*", which stays a generic client-error line
    return isinstance(error, HttpProcessingError) and "PRI/Upgrade" in str(error.message)


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's ``aiohttp.server`` logger for the REST port. aiohttp answers a malformed request
    itself (400: a bad Content-Length, Content-Length with chunked, too many headers, the HTTP/2
    preface of a gRPC client on the wrong port) and logs it with ERROR and a traceback, as it does
    an unreadable body it drains after the response. Those are the client's faults: one WARNING line
    each, which for a gRPC client names the gRPC port. Anything else aiohttp logs stays an ERROR with
    its traceback."""

    def __init__(self, grpc_port: int | None = None) -> None:
        super().__init__(logging.getLogger("aiohttp.server"))
        self.grpc_port = grpc_port

    def exception(
        self,
        msg: object,
        *args: object,
        exc_info: Any = True,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, CLIENT_FAULTS):
            context = str(msg) % args if args else str(msg)
            if http2_preface(error):
                where = f"port {self.grpc_port}" if self.grpc_port is not None else "the gRPC port"
                self.logger.warning("%s: HTTP/2 (a gRPC client?) on the REST port, which speaks "
                                    "HTTP/1.1; gRPC is on %s (a client error)", context, where,
                                    extra=extra)  # fmt: skip
            else:
                self.logger.warning("%s: %s (a client error)", context, one_line(error), extra=extra)
        else:
            self.logger.error(msg, *args, exc_info=exc_info, stack_info=stack_info, extra=extra)


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: 82\r\n\r\n"
        b'{"error": "too many open connections (setting max_http_connections); retry later"}')  # fmt: skip


class RestRunner(web.AppRunner):
    """aiohttp's AppRunner with a cap on open connections: one past it is answered 503 and closed
    before its request is read, so that REST cannot take the file descriptors gRPC needs (at the
    open-file limit, new gRPC calls fail and asyncio logs a traceback for every accept)."""

    def __init__(
        self, app: web.Application, max_connections: int, on_refused: Callable[[], object], **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.max_connections = max_connections
        self.on_refused = on_refused
        self.refused = 0

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        accept = server.connection_made

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                self.on_refused()
                transport.write(BUSY)
                transport.close()
                return
            accept(handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]
        return server
