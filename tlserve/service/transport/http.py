"""What both REST APIs share below their routes: the body, its JSON, JSON numbers, aiohttp's own log.

Every way a client can get these wrong — a corrupt gzip body, a disconnect mid-body, JSON nested
past Python's recursion limit, a lone UTF-16 surrogate in a string, an integer too large for a float
— is a ServiceError here (INVALID_ARGUMENT, or CANCELLED for a client that went away), never an
INTERNAL with a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tlserve.service.errors import Cancelled, InvalidArgument

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
CLIENT_FAULTS = (HttpProcessingError, web.RequestPayloadError, ConnectionError)
"""What aiohttp raises for a malformed request or a client that went away."""


def one_line(exc: BaseException) -> str:
    """aiohttp's message of ``exc`` on one line (it spreads them over several, with a caret)."""
    cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) and exc.__cause__ else exc
    text = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    parts = [line.strip() for line in str(text).splitlines()]
    return " ".join(p for p in parts if p.strip("^"))[:200] or type(exc).__name__


async def read_body(request: web.Request) -> bytes:
    """The whole body; aiohttp's own HTTPRequestEntityTooLarge (413) passes through."""
    try:
        return await request.read()
    except web.RequestPayloadError as exc:  # a corrupt gzip or deflate body, a bad chunk
        raise InvalidArgument(f"the request body cannot be read: {one_line(exc)}") from None
    except ConnectionError:
        raise Cancelled("the client disconnected before sending the whole request body") from None


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


def parse_json(data: bytes) -> dict[str, Any]:
    """The body as a JSON object whose strings are all valid Unicode."""
    try:
        parsed = json.loads(data)
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
    ragged, or hold an integer too large for any float."""
    try:
        return np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise InvalidArgument(message) from None


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's ``aiohttp.server`` logger for the REST port. aiohttp answers a malformed request
    itself (400: a bad Content-Length, Content-Length with chunked, too many headers, the HTTP/2
    preface of a gRPC client on the wrong port) and logs it with ERROR and a traceback, as it does
    an unreadable body it drains after the response. Those are the client's faults: one WARNING line
    each. Anything else aiohttp logs stays an ERROR with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"))

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
            self.logger.warning("%s: %s (a client error)", context, one_line(error), extra=extra)
        else:
            self.logger.error(msg, *args, exc_info=exc_info, stack_info=stack_info, extra=extra)
