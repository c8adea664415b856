"""The ``tlserve`` command line. Parsing only: each subcommand imports its heavy work lazily, so
``tlserve --help`` and ``tlserve bases`` answer at once without TensorFlow."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tlserve import tfnoise
from tlserve.errors import TlserveError, UsageError
from tlserve.training.augment import AUGMENTATIONS, DEFAULT_AUGMENT

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
TF_COMMANDS = ("train", "evaluate", "export", "demo")
"""The subcommands that import TensorFlow, whose C++ log lines are filtered (``tlserve.tfnoise``)."""


class _Parser(argparse.ArgumentParser):
    """A usage error in one line: what was wrong, and where the options are listed."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends "(default: X)" where a default says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # NOTE: `is`, since `in` would match 0 and 1
        says_nothing = any(default is x for x in (None, False, True, argparse.SUPPRESS))
        if says_nothing or "%(default)" in text or "(default:" in text or not action.option_strings:
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


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


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose", action="store_true", help=f"also show TensorFlow's own log lines (or {tfnoise.ENV}=1)"
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier on a folder of labelled images (feature extraction, fine-tuning or scratch)",
        formatter_class=_Formatter,
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
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with one subfolder per class")
    p.add_argument(
        "--out", type=Path, required=True, metavar="RUN_DIR", help="run dir to write (new or empty)"
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
        "--val-data", type=Path, metavar="DIR", help="a separate validation folder (overrides --val-split)"
    )
    _add_verbose(p)
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from tlserve.training.config import TrainConfig
    from tlserve.training.trainer import train

    fields = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "verbose")}
    train(TrainConfig(**fields))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a run's model on another labelled image folder",
        formatter_class=_Formatter,
        description=(
            "Score RUN_DIR's model on DATA_DIR (class subfolders named like the run's labels).\n"
            "Prints per-class precision/recall/F1 and writes evaluation.json and confusion.png."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where to write the report (default: RUN_DIR/evaluations/<DATA_DIR name>, replaced on a re-run)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--batch-size", type=int, default=32, help="images per prediction step")
    _add_verbose(p)
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from tlserve.training.evaluate import evaluate

    evaluate(args.run_dir, args.data_dir, out=args.out, batch_size=args.batch_size, overwrite=args.overwrite)
    return 0


def _formats(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="turn a run dir into a new, verified version in a model repository (SavedModel, ONNX)",
        formatter_class=_Formatter,
        description=(
            "Write RUN_DIR's model as REPO/NAME/VERSION/: a TF Serving SavedModel (signatures\n"
            "serving_default for float pixels and predict_images for encoded images, with warmup\n"
            "requests), model.onnx (fp32), optionally model.fp16.onnx and model.int8.onnx, labels.txt\n"
            "and manifest.json. Every artifact is checked against the Keras model on the run's\n"
            "validation images (at least 32) and carries its figures in the manifest. The version is\n"
            "assembled elsewhere and renamed into place; existing versions are never overwritten.\n"
            "A weak run (no better than chance on validation, or constant predictions) is refused\n"
            "unless --allow-weak is given.\n\n"
            "examples:\n"
            "  tlserve export runs/pets --repository models --name pets\n"
            "  tlserve export runs/pets --repository models --name pets --int8 --fp16"
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--repository", type=Path, required=True, metavar="REPO", help="model repository root")
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    p.add_argument("--version", type=int, help="version number (default: the next free integer)")
    p.add_argument(
        "--formats", type=_formats, default="savedmodel,onnx", metavar="LIST",
        help="comma-separated: savedmodel, onnx",
    )  # fmt: skip
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for CUDA/TensorRT)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ, for CPU)")
    p.add_argument(
        "--calibration-data", type=Path, metavar="DIR",
        help="images for int8 calibration (default: the run's training images)",
    )  # fmt: skip
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..18")
    p.add_argument(
        "--allow-weak", action="store_true",
        help="publish the run even if it is weak (validation accuracy not clearly above chance, i.e. the "
        "largest class's share plus max(5 points, 2 standard errors), or one class predicted for every "
        "validation image); the export then warns instead of refusing",
    )  # fmt: skip
    p.add_argument(
        "--allow-duplicate", action="store_true",
        help="publish the run even if a version of NAME already holds the same model.keras, labels and "
        "artifacts (by default such an export is refused: every server would swap to an identical version)",
    )  # fmt: skip
    _add_verbose(p)
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from tlserve.exporters.export import ExportOptions, export, summary_table

    result = export(
        ExportOptions(
            run_dir=args.run_dir,
            repository=args.repository,
            name=args.name,
            version=args.version,
            formats=args.formats,
            fp16=args.fp16,
            int8=args.int8,
            calibration_data=args.calibration_data,
            opset=args.opset,
            allow_weak=args.allow_weak,
            allow_duplicate=args.allow_duplicate,
        )
    )
    print(f"\npublished {result.path}")
    print(summary_table(result))
    return 0


def _add_bases(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bases", help="list the pretrained bases --base accepts", formatter_class=_Formatter)
    p.set_defaults(handler=_run_bases)


def _run_bases(args: argparse.Namespace) -> int:
    from tlserve.training.bases import format_table

    print(format_table())
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline end-to-end demo: train a base from scratch, transfer it, compare with scratch",
        formatter_class=_Formatter,
        description=(
            "Uses the handwritten digits that scikit-learn ships (no download), each drawn into a\n"
            "cluttered, coloured scene: trains a MobileNetV2 from scratch on digits 0-4 (the source\n"
            "task), then transfers it to digits 5-9 with a few images per class (frozen and finetune),\n"
            "trains scratch on the same few images, and exports the best target model to\n"
            "WORKDIR/models (SavedModel, ONNX fp32 and int8), serves it and classifies with it.\n"
            "Every training run is a plain `tlserve train` with default settings, printed as it runs."
        ),
    )
    p.add_argument("--workdir", type=Path, default=Path("demo-output"), help="where data and run dirs go")
    p.add_argument(
        "--per-class",
        type=int,
        nargs="+",
        default=[10],
        metavar="N",
        help="target-task training images per class, 1 to 60 (one row per value and mode)",
    )
    _add_verbose(p)
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from tlserve.demo import run_demo

    run_demo(args.workdir, per_class=args.per_class)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tlserve import __version__

    parser = _Parser(
        prog="tlserve",
        description="Deep transfer learning from training to production serving.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"tlserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_bases(sub)
    _add_demo(sub)
    from tlserve.service.commands import add_bench, add_predict, add_serve

    add_serve(sub, _Formatter)
    add_predict(sub, _Formatter)
    add_bench(sub, _Formatter)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``argv`` None: the process's own command line, whose stderr is filtered (``tlserve.tfnoise``)
    for the subcommands that import TensorFlow; a caller passing ``argv`` keeps its stderr as it is."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
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


if __name__ == "__main__":
    sys.exit(main())
