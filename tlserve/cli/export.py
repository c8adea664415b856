"""``tlserve export``: a run dir into a versioned model repository, each artifact checked."""

from __future__ import annotations

import argparse

from tlserve.cli.common import Formatter, add_verbose, local, repository


def _formats(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="turn a run dir into a new, verified version in a model repository (SavedModel, ONNX)",
        formatter_class=Formatter,
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
            "  tlserve export runs/pets --repository models --name pets --int8 --fp16\n\n"
            "exit codes: 0 published; 2 a bad request, refused before any work; 3 the export failed\n"
            "(an artifact disagrees with the Keras model, or a converter failed): nothing was published."
        ),
    )
    p.add_argument("run_dir", type=local, metavar="RUN_DIR")
    p.add_argument(
        "--repository",
        type=repository,
        required=True,
        metavar="REPO",
        help="model repository: a directory, or a bucket URL (s3://BUCKET/PREFIX, gs://...)",
    )
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    p.add_argument("--version", type=int, help="version number (default: the next free integer)")
    p.add_argument(
        "--formats", type=_formats, default="savedmodel,onnx", metavar="LIST",
        help="comma-separated: savedmodel, onnx",
    )  # fmt: skip
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for CUDA/TensorRT)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ, for CPU)")
    p.add_argument(
        "--calibration-data", type=local, metavar="DIR",
        help="images for int8 calibration (default: the run's training images)",
    )  # fmt: skip
    p.add_argument(
        "--no-calibrate", dest="calibrate", action="store_false",
        help="serve the raw softmax; by default a temperature fitted on the validation images (least "
        "log-loss) divides the logits inside every artifact, so a score of 0.8 means right about 80%% of "
        "the time; the manifest records T and the calibration error (ECE) before and after",
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
    add_verbose(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tlserve.exporters.export import export, summary_table
    from tlserve.exporters.options import ExportOptions

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
            calibrate=args.calibrate,
            opset=args.opset,
            allow_weak=args.allow_weak,
            allow_duplicate=args.allow_duplicate,
        )
    )
    print(f"\npublished {result.path}")
    print(summary_table(result))
    return 0
