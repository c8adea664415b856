"""One-line errors made from a library's many-line messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlserve import cli, errors
from tlserve.errors import first_line


def test_a_keras_weights_mismatch_reads_to_its_point(tmp_path: Path) -> None:
    import keras

    weights = tmp_path / "mobilenet_v2.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        weights
    )
    with pytest.raises(ValueError) as info:
        keras.applications.MobileNet(include_top=False, weights=str(weights), input_shape=(32, 32, 3))
    line = first_line(info.value)
    assert str(info.value).splitlines()[0].endswith(":")  # what Keras says first ends mid-thought
    assert "\n" not in line and len(line) <= 300
    assert line.startswith("A total of ") and "could not be loaded" in line
    assert "must match" in line and line.endswith(".")  # the reason, cut after a whole sentence
    assert "value=[[" not in line  # not the variable's values


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("short", "short"),
        ("first\nsecond", "first"),
        ("\n\n  indented first  \nsecond", "indented first"),
        ("intro:\n\n  the point\nmore", "intro: the point"),
        ("", "ValueError"),
        ("One. Two... three " + "x" * 40, "One."),
        ("x" * 60, "x" * 27 + "..."),
    ],
)
def test_first_line(message: str, expected: str) -> None:
    assert first_line(ValueError(message), limit=30) == expected


def tree_entries() -> dict[str, str]:
    """The error tree of the errors module's docstring: class name -> what it says (joined)."""
    entries: dict[str, str] = {}
    name = ""
    for line in (errors.__doc__ or "").split("\n\n", 1)[1].splitlines():
        if line.startswith(" "):  # a continuation line
            entries[name] += " " + line.strip()
        elif line.strip():
            name, _, text = line.lstrip("│├└─ ").partition(" ")
            entries[name] = text.strip()
    return entries


def test_the_error_tree_shows_every_error_with_its_exit_code() -> None:
    classes = {
        name: c
        for name, c in vars(errors).items()
        if isinstance(c, type) and issubclass(c, errors.TlserveError)
    }
    entries = tree_entries()
    assert set(entries) == set(classes), entries
    codes = {
        "TlserveError": cli.EXIT_FAILED,
        "UsageError": cli.EXIT_USAGE,
        "ExportError": cli.EXIT_EXPORT_FAILED,
    }
    assert set(codes) == set(classes)
    for name, code in codes.items():
        assert entries[name].endswith(f"the CLI exits with code {code}"), entries[name]
