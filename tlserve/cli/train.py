"""``tlserve train``: a run dir from a folder of images, by feature extraction or fine-tuning."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from tlserve.cli.common import Formatter, Parser, add_verbose, local
from tlserve.errors import UsageError
from tlserve.training.augment import AUGMENTATIONS, DEFAULT_AUGMENT


def _unfreeze(value: str) -> int | str | None:
    if value == "all":
        return None
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        expected = "expected a number of layers, 'all' or 'auto'"
        raise argparse.ArgumentTypeError(f"{expected}; got {value!r}") from None


def _auto(kind: type) -> Any:
    def parse(value: str) -> Any:
        if value == "auto":
            return None
        try:
            return kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} or 'auto'; got {value!r}") from None

    return parse


def _augment(value: str) -> tuple[str, ...]:
    from tlserve.training.augment import parse

    try:
        return parse(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--augment ")) from None


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier on a folder of labelled images (feature extraction, fine-tuning or scratch)",
        formatter_class=Formatter,
        description=(
            "Train an image classifier on DATA_DIR (one subfolder per class; JPEG, PNG, BMP, GIF)\n"
            "and write a run dir: model.keras, labels.txt, run.json, history.png, confusion.png,\n"
            "mistakes.png. With no tuning flag, each phase trains until validation stops improving\n"
            "and keeps its best epoch (docs/training.md says how).\n\n"
            "modes:\n"
            "  frozen    feature extraction: the base stays frozen, a new head is trained on its\n"
            "            outputs, computed once for the training images and a few augmented copies.\n"
            "            Best with little data.\n"
            "  finetune  frozen first until the head converges, then the top --unfreeze layers of the\n"
            "            base (whole blocks, BatchNorm kept in inference mode) train at --fine-tune-lr;\n"
            "            the head's weights are kept if fine-tuning does not beat them.\n"
            "  scratch   every layer trains from the given initialisation: the baseline to compare\n"
            "            transfer against, and the way to make a first base offline.\n\n"
            "examples:\n"
            "  tlserve train photos/ --out runs/pets --base mobilenet_v2\n"
            "  tlserve train photos/ --out runs/pets-ft --mode finetune --unfreeze 40\n"
            "  tlserve train bears/ --out runs/bears --base runs/cats-vs-dogs   # reuse your own net"
        ),
    )
    p.add_argument("data_dir", type=local, metavar="DATA_DIR", help="folder with one subfolder per class")
    p.add_argument(
        "--out", type=local, required=True, metavar="RUN_DIR", help="run dir to write (new or empty)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out when the run succeeds")
    g = p.add_argument_group("base network")
    g.add_argument(
        "--base",
        default="mobilenet_v2",
        help="a base from `tlserve bases`, or the path of an earlier run dir or .keras file "
        "(its network without the classification layer becomes the base)",
    )
    g.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (Keras downloads and caches them), none (random init) or PATH to a *_no_top.h5 "
        "file; ignored when --base is an earlier network",
    )
    g.add_argument("--image-size", type=int, help="square input size in pixels (default: the base's own)")
    g = p.add_argument_group("training")
    g.add_argument(
        "--mode", choices=["frozen", "finetune", "scratch"], default="frozen", help="see modes above"
    )
    g.add_argument(
        "--epochs",
        type=_auto(int),
        default=None,
        metavar="N|auto",
        help="most epochs of the head (or scratch) phase; auto: planned in steps (3000 on cached "
        "features, 300 when a frozen base runs every epoch, 1500 from scratch; fine-tuning 600), 10..200 "
        "epochs; a small set is "
        "repeated to make at least 8 steps an epoch (default: auto)",
    )
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the head (or scratch) phase")
    g.add_argument(
        "--fine-tune-epochs",
        type=_auto(int),
        default=None,
        metavar="N|auto",
        help="most epochs of the fine-tuning phase; 0 skips it (default: auto, as --epochs)",
    )
    g.add_argument(
        "--fine-tune-lr",
        type=_auto(float),
        default=None,
        metavar="LR|auto",
        help="learning rate of the fine-tuning phase; auto: 1e-5 for ImageNet weights, 0.3 of the "
        "rate an earlier network (--base RUN_DIR) was trained at (default: auto)",
    )
    g.add_argument(
        "--unfreeze",
        type=_unfreeze,
        default="auto",
        metavar="N|all|auto",
        help="layers to unfreeze from the top of the base in finetune mode, rounded up to whole blocks; "
        "auto: all of an earlier network (--base RUN_DIR), the top 30 of a Keras Application",
    )
    g.add_argument("--batch-size", type=int, default=32, help="images per training step")
    g.add_argument("--dropout", type=float, default=0.2, help="dropout before the classification layer")
    g.add_argument(
        "--hidden", type=int, default=0, help="width of an extra ReLU dense layer in the head; 0 = none"
    )
    g.add_argument(
        "--patience",
        type=_auto(int),
        default=None,
        metavar="N|auto",
        help="stop a phase after N epochs in which neither val loss nor val accuracy improved; the "
        "learning rate drops after N/2; auto: a fifth of the planned epochs, at least 5 (default: auto)",
    )
    g.add_argument(
        "--class-weight", choices=["none", "auto"], default="none", help="auto: balance imbalanced classes"
    )
    g.add_argument(
        "--augment",
        type=_augment,
        default=",".join(DEFAULT_AUGMENT),
        metavar="LIST",
        help="random transforms of training images: none, or a comma-separated list of "
        f"{', '.join(AUGMENTATIONS)}; add flip for photos, never for text or digits",
    )
    g.add_argument(
        "--no-augment", dest="augment", action="store_const", const=(), help="same as --augment none"
    )
    g.add_argument(
        "--feature-cache",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto/on: run a frozen base once over the training images (and a few augmented copies of them) "
        "and train the head on the cached features; off: run the base in every epoch",
    )
    g.add_argument(
        "--cache-memory-mb", type=int, default=2048, help="cached features/images beyond this spill to disk"
    )
    g.add_argument("--bn-momentum", type=float, default=0.9, help="BatchNorm momentum in scratch mode")
    g.add_argument(
        "--mixed-precision", choices=["auto", "on", "off"], default="auto", help="auto: on with a GPU"
    )
    g.add_argument("--seed", type=int, default=42, help="seeds the split, shuffling, augmentation and init")
    g = p.add_argument_group("validation")
    g.add_argument("--val-split", type=float, default=0.2, help="stratified fraction of DATA_DIR held out")
    g.add_argument(
        "--val-data", type=local, metavar="DIR", help="a separate validation folder (overrides --val-split)"
    )
    add_verbose(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tlserve.training.config import TrainConfig
    from tlserve.training.trainer import train

    fields = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "verbose")}
    train(TrainConfig(**fields))
    return 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """``tlserve train ARGV``'s arguments, as the command line parses them (a usage error exits 2)."""
    parser = Parser(prog="tlserve", formatter_class=Formatter)
    add(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])
