"""Numbers as clients send them — a model version in a URL or an OIP version string, a top-k or a
byte size in JSON or a proto — parsed the same way by every transport.

Text is ASCII digits only (``str.isdigit`` also accepts "²" and "٣", which ``int`` refuses or reads
as 3) and at most MAX_DIGITS of them, so that parsing is cheap (Python refuses to convert more than
4,300 digits at all) and every value fits an int64. A JSON count is an integer, never a bool.
"""

from __future__ import annotations

from tlserve.service.errors import InvalidArgument

MAX_DIGITS = 18
MAX_NUMBER = 10**MAX_DIGITS - 1


def _shown(value: object) -> str:
    """``value`` for a message: short, and never a conversion of a huge integer to text."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_NUMBER:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def parse_number(text: str, what: str) -> int:
    """A non-negative integer written in 1 to MAX_DIGITS ASCII digits."""
    if not (0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit()):
        raise InvalidArgument(f"{what} must be written in 1 to {MAX_DIGITS} digits 0-9; got {_shown(text)}")
    return int(text)


def parse_version(text: str) -> int | None:
    """A model version given as text: "" -> None (the newest serving), else a positive integer."""
    if not text:
        return None
    if text.isascii() and text.isdigit() and parse_number(text, "the model version") >= 1:
        return int(text)
    raise InvalidArgument(f"the model version must be a positive integer (or empty); got {_shown(text)}")


def parse_count(value: object, what: str, minimum: int = 1) -> int:
    """A count from JSON or a proto (a top-k, a byte size): an integer, not a bool, from ``minimum``
    to MAX_NUMBER."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_NUMBER:
        raise InvalidArgument(
            f"{what} must be an integer from {minimum} to {MAX_NUMBER}; got {_shown(value)}"
        )
    return value
