"""What every command's parser shares: exit codes, one-line usage errors, the help formatter and
the --verbose flag."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from tlserve import storage, tfnoise
from tlserve.errors import UsageError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_EXPORT_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_CODES = f"""exit codes:
  0    done
  {EXIT_FAILED}    failed; the message says why (a command's --help may say more)
  {EXIT_USAGE}    bad input: an argument, a path, a dataset; refused before any work
  {EXIT_EXPORT_FAILED}    an export failed (tlserve export, or the demo's): an artifact disagrees
       with the Keras model, a converter failed, or no version number was free;
       nothing was published
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGTERM)"""


def local(text: str) -> Path:
    """A path on this machine (argparse type): a URL is refused, never taken for a path."""
    if refused := storage.not_a_path(text):
        raise argparse.ArgumentTypeError(refused)
    return Path(text)


def repository(text: str) -> Path | storage.Remote:
    """A model repository (argparse type): a directory, or a bucket URL (s3://, gs://, ...)."""
    try:
        return storage.location(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Parser(argparse.ArgumentParser):
    """A usage error in one line: what was wrong, and where the options are listed."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends "(default: X)" where a default says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # NOTE: `is`, since `in` would match 0 and 1
        says_nothing = any(default is x for x in (None, False, True, argparse.SUPPRESS))
        if says_nothing or "%(default)" in text or "(default:" in text or not action.option_strings:
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose", action="store_true", help=f"also show TensorFlow's own log lines (or {tfnoise.ENV}=1)"
    )
