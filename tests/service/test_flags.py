"""``tlserve serve``'s flags come from the settings: every setting has one, its help is the setting's
docstring, and a flag sets exactly its setting."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tlserve.service.flags import NOT_FLAGS, add_setting_flags, flag_name, help_text
from tlserve.service.settings import ServerSettings, load_settings


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    return parser


def test_every_setting_has_a_flag_with_its_docstring(parser: argparse.ArgumentParser) -> None:
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    fields = ServerSettings.model_fields
    assert set(actions) == set(fields) - set(NOT_FLAGS)
    for setting, action in actions.items():
        assert action.option_strings == [flag_name(setting, fields[setting])]
        docstring = " ".join((fields[setting].description or "").split()).replace("``", "`")
        assert action.help is not None and "default" in action.help  # the docstring's own, or added
        said = action.help.rsplit(" (default: ", 1)[0].replace("%%", "%")
        assert len(said) > 10 and docstring.startswith(said), (setting, said, docstring)


def test_flags_set_their_settings(parser: argparse.ArgumentParser, tmp_path: Path) -> None:
    flags = ["--repository", str(tmp_path), "--max-decode-queue", "7", "--no-batching", "--access-log",
             "--providers", "cpu", "--log-format", "json", "--allowed-image-formats", "JPEG, PNG",
             "--max-connection-age-s", "2.5"]  # fmt: skip
    args = parser.parse_args(flags)
    settings = load_settings(None, **vars(args))
    assert (settings.location, settings.max_decode_queue, settings.batching, settings.access_log) == (
        tmp_path,
        7,
        False,
        True,
    )
    assert (settings.providers, settings.log_format) == (["CPUExecutionProvider"], "json")
    assert (settings.allowed_image_formats, settings.max_connection_age_s) == (["JPEG", "PNG"], 2.5)
    assert vars(parser.parse_args([])) == {}  # flags left out keep the environment's, the file's, the default


def test_off_turns_a_port_off(parser: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch) -> None:
    args = vars(parser.parse_args(["--http-port", "off", "--keepalive-time-s", "OFF"]))
    assert args == {"http_port": None, "keepalive_time_s": None}
    assert load_settings(None, **args).http_port is None
    monkeypatch.setenv("TLSERVE_METRICS_PORT", "off")
    assert load_settings(None).metrics_port is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--http-port", "closed"])


def test_help_is_the_first_sentence() -> None:
    fields = ServerSettings.model_fields
    assert (
        help_text(fields["compute_threads"])
        == "Threads running backend calls, for all model versions together"
    )
    assert (
        help_text(fields["version_policy"])
        == "Default version policy: latest, latest:N, all, versions:A,B,..."
    )
    with pytest.raises(SystemExit):
        argparse.ArgumentParser().parse_args(["--log-format", "xml"])
