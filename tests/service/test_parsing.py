"""Versions and counts as clients write them: ASCII digits only, at most 18, never a bool."""

from __future__ import annotations

import pytest

from tlserve.service.errors import InvalidArgument
from tlserve.service.parsing import MAX_NUMBER, parse_count, parse_number, parse_version


@pytest.mark.parametrize(("text", "version"), [("", None), ("1", 1), ("007", 7), ("9" * 18, MAX_NUMBER)])
def test_versions(text: str, version: int | None) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "positive integer"),
        ("-1", "positive integer"),
        ("1.0", "positive integer"),
        (" 1", "positive integer"),
        ("²", "positive integer"),  # str.isdigit() accepts it; int() refuses it
        ("٣", "positive integer"),  # int() reads it as 3
        ("1" * 19, "1 to 18 digits"),
        ("1" * 5000, "(5002 characters)"),  # past Python's int-string limit; the message stays short
    ],
)
def test_bad_versions(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_version(text)


def test_numbers_in_text() -> None:
    assert parse_number("0", "a size") == 0
    with pytest.raises(InvalidArgument, match="a size must be written in 1 to 18 digits 0-9; got ''"):
        parse_number("", "a size")


@pytest.mark.parametrize(
    ("value", "shown"),
    [(2**70, "an integer of 71 bits"), (True, "True"), (0, "0"), (-3, "-3"), (1.5, "1.5"), ("5", "'5'"),
     (None, "None")],
)  # fmt: skip
def test_bad_counts(value: object, shown: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_count(value, "top_k")
    assert str(error.value) == f"top_k must be an integer from 1 to {MAX_NUMBER}; got {shown}"


def test_counts() -> None:
    assert parse_count(5, "top_k") == 5
    assert parse_count(0, "a size", minimum=0) == 0
    assert parse_count(MAX_NUMBER, "top_k") == MAX_NUMBER
