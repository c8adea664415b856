"""``tlserve demo``: the whole path, train to serve, on data made on the spot."""

from __future__ import annotations

import argparse
from pathlib import Path

from tlserve.cli.common import Formatter, add_verbose, local


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline end-to-end demo: train a base from scratch, transfer it, compare with scratch",
        formatter_class=Formatter,
        description=(
            "Uses the handwritten digits that scikit-learn ships (no download), each drawn into a\n"
            "cluttered, coloured scene: trains a MobileNetV2 from scratch on digits 0-4 (the source\n"
            "task), then transfers it to digits 5-9 with a few images per class (frozen and finetune),\n"
            "trains scratch on the same few images, and exports the best target model to\n"
            "WORKDIR/models (SavedModel, ONNX fp32 and int8), serves it and classifies with it.\n"
            "Every training run is a plain `tlserve train` with default settings, printed as it runs."
        ),
    )
    p.add_argument("--workdir", type=local, default=Path("demo-output"), help="where data and run dirs go")
    p.add_argument(
        "--per-class",
        type=int,
        nargs="+",
        default=[10],
        metavar="N",
        help="target-task training images per class, 1 to 60 (one row per value and mode)",
    )
    add_verbose(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tlserve.demo import run_demo

    run_demo(args.workdir, per_class=args.per_class)
    return 0
