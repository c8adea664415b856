"""Server logs: one line per event, plain or JSON, the request id on every request-related line.

The interceptor puts each call's request id in ``request_id``; a filter copies it onto every record
logged while that call is handled (in the event loop's task; backend threads log without it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

access = logging.getLogger("tlserve.access")
"""The access log (``--access-log``): one line per answered call, gRPC and REST."""


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", "")
        return f"{text} [request_id={rid}]" if rid else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback stays inside its line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str, fmt: str = "plain") -> None:
    """Root logging to stderr in ``fmt`` ("plain" or "json") at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
