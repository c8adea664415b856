"""The ``tlserve`` command line. Parsing only: each subcommand imports its heavy work lazily, so
``tlserve --help`` and ``tlserve bases`` answer at once without TensorFlow."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from tlserve import tfnoise
from tlserve.cli import bases, bench, demo, evaluate, export, predict, serve, train
from tlserve.cli.common import (
    EXIT_CODES,
    EXIT_EXPORT_FAILED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Formatter,
    Parser,
)
from tlserve.errors import ExportError, TlserveError, UsageError

COMMANDS = (train, evaluate, export, bases, demo, serve, predict, bench)
"""One module per command, each with ``add(sub)`` (its parser) and ``run(args)``, in --help's order."""
__all__ = ["EXIT_CODES", "EXIT_EXPORT_FAILED", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "main"]
TF_COMMANDS = ("train", "evaluate", "export", "demo")
"""The subcommands that import TensorFlow, whose C++ log lines are filtered (``tlserve.tfnoise``)."""


def build_parser() -> argparse.ArgumentParser:
    from tlserve import __version__

    parser = Parser(
        prog="tlserve",
        description="Deep transfer learning from training to production serving.",
        epilog=EXIT_CODES,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"tlserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add(sub)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``argv`` None: the process's own command line, whose stderr is filtered (``tlserve.tfnoise``)
    for the subcommands that import TensorFlow; a caller passing ``argv`` keeps its stderr as it is."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "any_arguments", False):  # NOTE: a command not installed here
        _unrecognized(parser, args.command, extra)
    tf_logs = os.environ.get(tfnoise.ENV)  # NOTE: restored after the command, for a caller of main()
    if getattr(args, "verbose", False):
        os.environ[tfnoise.ENV] = "1"  # NOTE: also read by the exporter's tf2onnx process
    if not tfnoise.wanted():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv is None and args.command in TF_COMMANDS:
        tfnoise.quiet()
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        # NOTE: SIGTERM (a pod being stopped) gets the clean-up of Ctrl-C: no half-written output.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code: int = args.handler(args)
        return code
    except UsageError as exc:
        print(f"tlserve {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExportError as exc:
        print(f"tlserve {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_EXPORT_FAILED
    except TlserveError as exc:
        print(f"tlserve {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"tlserve {args.command}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if tf_logs is None:
            os.environ.pop(tfnoise.ENV, None)
        else:
            os.environ[tfnoise.ENV] = tf_logs


def _unrecognized(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> NoReturn:
    """The usage error for arguments no parser took, said by the subcommand's parser, whose --help
    lists the options it takes. NOTE: an option the subcommand takes is left over only when it came
    before the subcommand (``tlserve --verbose train``): the error says where it goes."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subparser: argparse.ArgumentParser = sub.choices[command]
    for option in extra:
        if option.split("=", 1)[0] in subparser._option_string_actions:
            subparser.error(f"{option} goes after the command: tlserve {command} ... {option}")
    subparser.error(f"unrecognized arguments: {' '.join(extra)}")
