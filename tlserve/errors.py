"""The exception tree of tlserve.

TlserveError            anything tlserve reports to a user on purpose
└── UsageError          bad input: a path, an option, a dataset; the CLI exits with code 2
"""

from __future__ import annotations


class TlserveError(Exception):
    """Base of every error tlserve raises on purpose; the message is safe to show to a user."""


class UsageError(TlserveError):
    """The user asked for something that cannot be done; the message says what and what is allowed."""


class ExportError(TlserveError):
    """A converter (tf2onnx, the quantizer) failed or produced something unexpected."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of a library's error message, for a one-line error of our own."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]
