"""The exception tree of tlserve.

TlserveError            anything tlserve reports to a user on purpose; the CLI exits with code 1
├── UsageError          bad input: a path, an option, a dataset; the CLI exits with code 2
└── ExportError         an export failed on sound input: an artifact disagrees with the Keras model
                        (parity) or a converter failed; nothing was published; the CLI exits with code 3
"""

from __future__ import annotations

import re


class TlserveError(Exception):
    """Base of every error tlserve raises on purpose; the message is safe to show to a user."""


class UsageError(TlserveError):
    """The user asked for something that cannot be done; the message says what and what is allowed."""


class ExportError(TlserveError):
    """An exported artifact disagrees with the Keras model beyond its tolerance, or a converter
    (tf2onnx, the quantizer) failed or produced something unexpected; the version is not published."""


_SENTENCE_END = re.compile(r"(?<!\.)[.!?](?=\s)")  # NOTE: not the dots of an ellipsis


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The gist of a library's error message on one line, for a one-line error of our own: its
    first line, continued by the next one when it ends in a colon (Keras: "Example error message
    for object <Conv2D ...>:"), and when longer than ``limit``, cut after its last whole sentence
    that fits (else at ``limit``, marked with "...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    gist = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    if len(gist) <= limit:
        return gist
    ends = [m.end() for m in _SENTENCE_END.finditer(gist, 0, limit)]
    return gist[: ends[-1]] if ends else gist[: limit - 3].rstrip() + "..."
