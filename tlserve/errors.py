"""The exception tree of tlserve.

TlserveError            anything tlserve reports to a user on purpose
└── UsageError          bad input: a path, an option, a dataset; the CLI exits with code 2
"""

from __future__ import annotations


class TlserveError(Exception):
    """Base of every error tlserve raises on purpose; the message is safe to show to a user."""


class UsageError(TlserveError):
    """The user asked for something that cannot be done; the message says what and what is allowed."""
