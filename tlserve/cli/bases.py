"""``tlserve bases``: the pretrained bases ``--base`` accepts."""

from __future__ import annotations

import argparse

from tlserve.cli.common import Formatter


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bases", help="list the pretrained bases --base accepts", formatter_class=Formatter)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tlserve.training.bases import format_table

    print(format_table())
    return 0
