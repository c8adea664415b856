"""The flags of ``tlserve serve``, made from the settings' fields: one flag per setting, its help the
first sentence of the setting's docstring, so the two cannot drift apart."""

from __future__ import annotations

import argparse
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo

from tlserve import storage
from tlserve.service.settings import ServerSettings

NOT_FLAGS = {
    "models": "per-model overrides: a config file's [models.NAME] or TLSERVE_MODELS__NAME__KEY",
    "auth_tokens": "secrets stay out of the process list: TLSERVE_AUTH_TOKENS or --auth-tokens-file",
}
"""Settings with no flag, and where they are set instead."""
_SENTENCE = re.compile(r"(?<=[^.]\.)\s")


def flag_name(setting: str, field: FieldInfo) -> str:
    """``--max-batch-size``; a setting on by default is turned off with ``--no-...``."""
    name = setting.replace("_", "-")
    return f"--no-{name}" if field.annotation is bool and field.default is True else f"--{name}"


def help_text(field: FieldInfo) -> str:
    """The first sentence of the setting's docstring, on one line."""
    text = " ".join((field.description or "").split())
    sentence = _SENTENCE.split(text, maxsplit=1)[0]
    sentence = sentence[:-1] if sentence.endswith(".") and not sentence.endswith("..") else sentence
    return sentence.replace("``", "`").replace("%", "%%")


def _base(annotation: Any) -> Any:
    """``int`` of ``int | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (base,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return base
    return annotation


def _or_off(kind: type) -> Any:
    def parse(text: str) -> Any:
        if text.strip().lower() == "off":
            return None
        try:
            return kind(text)
        except ValueError:
            expected = f"{'an' if kind is int else 'a'} {kind.__name__} or 'off'"
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None

    return parse


def _local_path(text: str) -> Path:
    if refused := storage.not_a_path(text):
        raise argparse.ArgumentTypeError(refused)
    return Path(text)


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (but ``NOT_FLAGS``); a flag left out keeps the config file's, the
    environment's or the default value, which its help shows."""
    for setting, field in ServerSettings.model_fields.items():
        if setting in NOT_FLAGS:
            continue
        text = help_text(field)
        base = _base(field.annotation)
        if base is bool:
            action, shown = ("store_false", "on") if field.default is True else ("store_true", "off")
            said = "" if "default" in text else f" (default: {shown})"
            parser.add_argument(flag_name(setting, field), dest=setting, action=action,
                                default=argparse.SUPPRESS, help=text + said)  # fmt: skip
            continue
        default = field.get_default(call_default_factory=True)
        unset = "off" if base in (int, float) else "unset"
        shown = ",".join(default) if isinstance(default, list) else (unset if default is None else default)
        metavar = "REPO" if setting == "repository" else setting.split("_")[-1].upper()
        options: dict[str, Any] = {"dest": setting, "default": argparse.SUPPRESS, "metavar": metavar}
        if typing.get_origin(base) is Literal:
            # NOTE: the settings check the value, with the same one-line error as any other setting's
            options["metavar"] = "{" + ",".join(typing.get_args(base)) + "}"
        elif typing.get_origin(base) is list:
            options.update(type=_comma_list, metavar="A,B,...")
        elif base in (int, float) and field.annotation is not base:
            options["type"] = _or_off(base)  # NOTE: an optional number: "off" is None
        elif base is Path:
            options["type"] = _local_path
        elif base in (int, float, str):
            options["type"] = base
        else:  # NOTE: a new kind of setting must be given a flag type here, or be listed in NOT_FLAGS
            raise TypeError(f"setting {setting}: no flag type for {field.annotation}")
        said = "" if "default" in text else f" (default: {shown})"  # NOTE: some docstrings say it
        parser.add_argument(flag_name(setting, field), help=text + said, **options)
