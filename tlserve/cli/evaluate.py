"""``tlserve evaluate``: a run dir's network on a labelled folder of images."""

from __future__ import annotations

import argparse

from tlserve.cli.common import Formatter, add_verbose, local


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a run's model on another labelled image folder",
        formatter_class=Formatter,
        description=(
            "Score RUN_DIR's model on DATA_DIR (class subfolders named like the run's labels).\n"
            "Prints per-class precision/recall/F1 and writes evaluation.json and confusion.png."
        ),
    )
    p.add_argument("run_dir", type=local, metavar="RUN_DIR")
    p.add_argument("data_dir", type=local, metavar="DATA_DIR")
    p.add_argument(
        "--out",
        type=local,
        metavar="DIR",
        help="where to write the report (default: RUN_DIR/evaluations/<DATA_DIR name>, replaced on a re-run)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--batch-size", type=int, default=32, help="images per prediction step")
    add_verbose(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tlserve.training.evaluate import evaluate

    evaluate(args.run_dir, args.data_dir, out=args.out, batch_size=args.batch_size, overwrite=args.overwrite)
    return 0
