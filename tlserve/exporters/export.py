"""``tlserve export``: a run dir -> a new, complete, verified version in a model repository.

Every artifact is checked against the Keras model before the version is published, and carries its
measured figures in ``manifest.json``. The version is assembled in a hidden staging directory beside
it and renamed into place: a server polling the repository never sees half of one, and an existing
version is never overwritten. A run whose validation shows a weak model (``tlserve.training.quality``)
is refused unless ``allow_weak`` is set, and so is a run already published with the same artifacts
(the manifest records the sha256 of the run's ``model.keras``) unless ``allow_duplicate`` is set.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlserve import __version__
from tlserve import repository as repo
from tlserve.errors import ExportError, UsageError
from tlserve.exporters import checks
from tlserve.exporters.options import FORMATS, ExportOptions, check_batch
from tlserve.exporters.publish import ManifestUncertain, publish, publish_remote
from tlserve.storage import Remote, StorageError
from tlserve.training import quality, rundir

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ExportOptions", "ExportResult", "check_options", "export", "run_quality", "summary_table"]


@dataclass
class ExportResult:
    path: Path | str
    """The version's directory, or its URL in a bucket."""
    manifest: repo.Manifest
    warnings: list[str]


def check_options(options: ExportOptions) -> None:
    """Everything that can be wrong with the request, before any work."""
    try:
        repo.check_model_name(options.name)
    except ValueError as exc:
        raise UsageError(f"--name: {exc}") from None
    unknown = [f for f in options.formats if f not in FORMATS]
    if unknown or not options.formats:
        raise UsageError(
            f"unknown format(s) {', '.join(unknown) or '(none given)'}; --formats takes a comma-separated "
            f"list of {', '.join(FORMATS)}"
        )
    if (options.fp16 or options.int8) and "onnx" not in options.formats:
        raise UsageError("--fp16 and --int8 make ONNX variants: include onnx in --formats")
    if options.calibration_data is not None and not options.int8:
        raise UsageError("--calibration-data is only used with --int8")
    from tlserve.exporters.onnx_export import check_opset

    check_opset(options.opset)
    if options.version is not None and options.version < 1:
        raise UsageError(f"--version must be a positive integer; got {options.version}")
    rundir.check_run_dir(options.run_dir)
    target = options.repository
    published = _published(options)
    if options.calibration_data is not None:
        from tlserve.training.data import IMAGE_EXTENSIONS

        folder = options.calibration_data
        if not folder.is_dir():
            raise UsageError(f"--calibration-data {folder} is not a directory")
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*") if p.is_file()):
            raise UsageError(
                f"--calibration-data {folder} holds no images "
                f"({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}, searched recursively)"
            )
    run = rundir.read_run(options.run_dir)  # a corrupt run.json is bad input, found before any work
    verdict = run_quality(run)
    if verdict is not None and verdict["weak"] and not options.allow_weak:
        raise UsageError(
            f"{options.run_dir}: weak model, not exported: {_reasons(verdict)}; retrain it, or pass "
            "--allow-weak to publish it anyway"
        )
    if options.version is not None and options.version in published.taken:
        raise UsageError(
            f"version {options.version} of {options.name} already exists in {target}; versions are never "
            f"overwritten (next free: {published.taken[-1] + 1})"
        )
    duplicate = None if options.allow_duplicate else _duplicate_of(options, published)
    if duplicate is not None:
        raise UsageError(
            f"{options.run_dir} is already published as version {duplicate} of {options.name} (same "
            "model.keras, labels and kinds of artifact), which every server would swap to again; pass "
            "--allow-duplicate to publish it anyway (e.g. with other --calibration-data)"
        )


def _artifact_kinds(options: ExportOptions) -> set[tuple[str, str, int | None]]:
    """(kind, precision, opset) of every artifact ``options`` asks for."""
    kinds: set[tuple[str, str, int | None]] = set()
    if "savedmodel" in options.formats:
        kinds.add(("savedmodel", "fp32", None))
    if "onnx" in options.formats:
        precisions = ["fp32"] + ["fp16"] * options.fp16 + ["int8"] * options.int8
        kinds |= {("onnx", precision, options.opset) for precision in precisions}
    return kinds


@dataclass
class _Published:
    """The versions of the model already in the repository."""

    visible: list[int]
    taken: list[int]
    """Numbers no export may take: every version dir (in a bucket, uploads in progress too)."""
    read: Callable[[int], repo.Manifest]


def _published(options: ExportOptions) -> _Published:
    """What the repository holds of the model, checking that the export can write there."""
    target, name = options.repository, options.name
    if isinstance(target, Remote):
        try:
            listing = target.scan()
            probe = f".tlserve-probe-{uuid.uuid4().hex}"  # NOTE: hidden at the top: no server sees it
            target.create(probe, b"")
            target.remove(probe)
        except (StorageError, FileExistsError) as exc:
            raise UsageError(f"{exc} (exporting needs list, get, put and delete on the prefix)") from None

        def read_remote(version: int) -> repo.Manifest:
            try:
                data = json.loads(target.read(f"{name}/{version}/{repo.MANIFEST_FILE}"))
            except StorageError as exc:  # NOTE: not a bad manifest: the duplicate check cannot be done
                raise UsageError(f"{exc} (exporting needs list, get, put and delete on the prefix)") from None
            except ValueError as exc:
                raise repo.ManifestError(str(exc)) from None
            return repo.Manifest.from_dict(data)

        return _Published(listing.visible(name), listing.taken(name), read_remote)
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"repository {target} is not writable ({existing} does not let us create files)")
    model_dir = target / name
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"{model_dir} exists and is not a directory; cannot hold versions of {name}")
    taken = sorted(int(p.name) for p in model_dir.glob("*") if repo.is_version_name(p.name))
    return _Published(repo.versions(model_dir), taken, lambda v: repo.Manifest.read(model_dir / str(v)))


def _duplicate_of(options: ExportOptions, published: _Published) -> int | None:
    """The newest version of the model exported from the same weights (``model.keras``'s sha256)
    and labels with the same artifacts and calibration choice as ``options`` asks for; None when there
    is none.
    Versions whose manifest cannot be read, or predates the weights checksum, are not compared."""
    digest = repo.sha256_file(options.run_dir / rundir.MODEL_FILE)
    labels = rundir.read_labels(options.run_dir)
    wanted = _artifact_kinds(options)
    for version in reversed(published.visible):
        try:
            manifest = published.read(version)
        except repo.ManifestError:
            continue
        kinds = {(a.kind, a.precision, a.opset) for a in manifest.artifacts}
        # NOTE: a version from before calibration has no record: never the same as a new export,
        # which would add calibration, the embedding and the reference statistics
        same_scores = manifest.calibration.get("requested") == options.calibrate
        if (
            manifest.source.get("model_sha256") == digest
            and manifest.labels == labels
            and kinds == wanted
            and same_scores
        ):
            return version
    return None


class _Steps:
    """Numbered progress lines with elapsed times, for the slow steps."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = 0.0

    def start(self, text: str) -> None:
        self.done += 1
        self.started = time.perf_counter()
        print(f"[{self.done}/{self.total}] {text} ...", end="", flush=True)

    def end(self, note: str = "") -> None:
        print(f" {time.perf_counter() - self.started:.1f}s{('  ' + note) if note else ''}", flush=True)
        self.started = 0.0

    def abandon(self) -> None:
        """End the line of a step that did not finish, so that what explains why starts a line."""
        if self.started:
            print(flush=True)
            self.started = 0.0


def run_quality(run: rundir.RunRecord) -> dict[str, Any] | None:
    """The run's quality verdict: the one the trainer stored in run.json, or, for runs trained before
    it did, one computed from the validation confusion matrix; None when run.json has neither."""
    if run.quality is not None:
        return run.quality
    confusion = run.confusion_matrix
    if confusion is None:
        return None
    labels = rundir.read_labels(run.run_dir)
    # NOTE: labels that do not fit the matrix are reported once the model is loaded (it says why).
    names = labels if len(labels) == len(confusion) else None
    try:
        return quality.assess(confusion, names)
    except ValueError as exc:
        raise UsageError(f"{run.file}: metrics.confusion_matrix: {exc}") from None


def _reasons(verdict: dict[str, Any]) -> str:
    reasons = verdict.get("reasons")
    if not isinstance(reasons, list) or not reasons:
        reasons = ["run.json marks it weak"]
    return "; ".join(str(r) for r in reasons)


class _NoRetracingWarning(logging.Filter):
    """Keras' "N out of the last M calls ... triggered tf.function retracing": the export runs several
    small models over batches of a few shapes on purpose; the warning says nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_QUIET = _NoRetracingWarning()


def export(options: ExportOptions) -> ExportResult:
    check_options(options)
    logging.getLogger("tensorflow").addFilter(_QUIET)  # NOTE: a set: adding it again is a no-op
    # NOTE: heavy imports only once the request is known to be sound.
    from tlserve.exporters import calibration as calib
    from tlserve.exporters import images as imgs
    from tlserve.exporters import onnx_export, quantize, savedmodel
    from tlserve.exporters import reference as reference_stats

    run = rundir.read_run(options.run_dir)
    labels = rundir.read_labels(options.run_dir)
    model = rundir.load_run_model(options.run_dir)
    size = int(model.inputs[0].shape[1])
    width = int(model.outputs[0].shape[-1])
    if width != len(labels):
        raise UsageError(
            f"{options.run_dir}: labels.txt has {len(labels)} labels but the model outputs {width} "
            "scores; the run dir is inconsistent"
        )
    created: list[Path] = []
    if isinstance(options.repository, Path):
        model_dir = options.repository / options.name
        created = [d for d in (model_dir, *model_dir.parents) if not d.exists()]
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=repo.STAGING_PREFIX, dir=model_dir))
    else:  # NOTE: assembled here, uploaded once complete
        staging = Path(tempfile.mkdtemp(prefix="tlserve-upload-"))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a server may run as another user
    scratch = Path(tempfile.mkdtemp(prefix="tlserve-export-"))
    warnings: list[str] = []
    verdict = run_quality(run)
    if verdict is None:
        warnings.append("run.json has no validation confusion matrix, so the model's quality was not checked")
    elif verdict["weak"]:
        warnings.append(f"weak model published because of --allow-weak: {_reasons(verdict)}")
    steps = _Steps(5 + ("onnx" in options.formats) + options.fp16 + options.int8)
    try:
        steps.start("loading validation images")
        validation = imgs.validation_images(run, labels, size, options.validation_limit)
        steps.end(f"{0 if validation is None else len(validation.pixels)} images")
        steps.start("calibrating confidence (temperature scaling on the validation images)")
        model, confidence = calib.calibrate(
            model,
            None if validation is None else validation.pixels,
            None if validation is None else validation.labels,
            options.calibrate,
            check_batch(size),
        )
        steps.end(calib.describe(confidence))
        if options.calibrate and confidence["method"] != "temperature":
            warnings.append(f"scores not calibrated: {confidence.get('note', '')}")
        steps.start("reference statistics (class priors, confidence, pooled-feature centroids)")
        statistics, reference_record = reference_stats.build(
            model, run, labels, validation, options.reference_limit, check_batch(size)
        )
        steps.end(reference_stats.describe(reference_record))
        if statistics is None:
            warnings.append(f"no reference statistics: {reference_record['note']}")
        model = reference_stats.with_embedding(model)
        steps.start("computing the reference outputs")
        check = imgs.parity_images(validation, size, options.parity_images)
        predicted = model.predict(check.pixels, verbose=0, batch_size=check_batch(size))
        embedding: np.ndarray | None = None
        if isinstance(predicted, dict):
            reference, embedding = predicted[repo.OUTPUT_NAME], predicted[repo.EMBEDDING_NAME]
        else:
            reference = predicted
        outputs = (repo.OUTPUT_NAME,) if embedding is None else (repo.OUTPUT_NAME, repo.EMBEDDING_NAME)
        steps.end(f"{len(check.pixels)} images for parity ({check.source}); outputs {', '.join(outputs)}")
        artifacts: list[repo.Artifact] = []

        saved_model_dir = staging if "savedmodel" in options.formats else scratch / "saved_model"
        steps.start("writing the SavedModel (serving_default, predict_images, warmup requests)")
        savedmodel.export_savedmodel(model, saved_model_dir, options.name)
        if "savedmodel" in options.formats:
            artifacts.append(checks.check_savedmodel(saved_model_dir, check, reference, options, embedding))
            steps.end(_describe(artifacts[-1]))
        else:
            steps.end("(for the ONNX conversion only)")
        # NOTE: the Keras model is not needed past this point (the reference outputs are kept), and
        # the ONNX conversion runs next in its own process: a few times the SavedModel's size with
        # the weights lifted (onnx_lifted.py), over twenty times on tf2onnx's own path.
        del model
        gc.collect()

        if "onnx" in options.formats:
            steps.start(f"converting to ONNX fp32 (tf2onnx, opset {options.opset})")
            fp32 = staging / repo.ONNX_FILES["fp32"]
            onnx_export.convert_fp32(saved_model_dir, fp32, options.opset, outputs)
            session = onnx_export.cpu_session(fp32)
            got = onnx_export.run(session, check.pixels)
            parity = checks.measure_parity(
                reference, got, options.tolerance, providers=session.get_providers()
            )
            checks.require(parity, "ONNX fp32")
            if embedding is not None:
                parity[repo.EMBEDDING_NAME] = checks.measure_embedding(
                    embedding, onnx_export.run(session, check.pixels, repo.EMBEDDING_NAME), options.tolerance
                )
                checks.require_embedding(parity[repo.EMBEDDING_NAME], "ONNX fp32")
            artifacts.append(checks.onnx_artifact(staging, "fp32", options.opset, parity, session, check))
            steps.end(_describe(artifacts[-1]))

        if options.fp16:
            steps.start("converting to ONNX fp16 (float32 inputs/outputs kept)")
            fp16 = staging / repo.ONNX_FILES["fp16"]
            onnx_export.convert_fp16(staging / repo.ONNX_FILES["fp32"], fp16)
            session = onnx_export.cpu_session(fp16)
            parity = checks.measure_parity(
                reference, onnx_export.run(session, check.pixels), options.fp16_tolerance,
                providers=session.get_providers(),
                note="measured on the CPU provider; fp16 is meant for CUDA/TensorRT",
            )  # fmt: skip
            if embedding is not None:
                parity[repo.EMBEDDING_NAME] = checks.measure_embedding(
                    embedding, onnx_export.run(session, check.pixels, repo.EMBEDDING_NAME),
                    options.fp16_tolerance,
                )  # fmt: skip
            artifacts.append(checks.onnx_artifact(staging, "fp16", options.opset, parity, session, check))
            artifacts[-1].latency_ms["note"] = "CPU provider; fp16 is meant for CUDA/TensorRT"
            if parity["max_abs_diff"] > options.fp16_tolerance:
                warnings.append(
                    f"fp16 max abs diff {parity['max_abs_diff']:.3g} exceeds the stated "
                    f"{options.fp16_tolerance:g}"
                )
            steps.end(_describe(artifacts[-1]))

        if options.int8:
            steps.start("quantizing to ONNX int8 (static QDQ, calibrated)")
            calibration = imgs.calibration_images(
                run, options.calibration_data, size, options.calibration_limit
            )
            artifact = quantize.int8_artifact(
                staging, calibration, validation, check, reference, options, embedding
            )
            artifacts.append(artifact)
            warnings += [f"{note} (so the manifest does not recommend int8)" for note in artifact.notes]
            steps.end(_describe(artifact))

        (staging / repo.LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        manifest = _manifest(
            options, run, labels, size, artifacts, staging / repo.LABELS_FILE,
            None if embedding is None else int(embedding.shape[1]),
        )  # fmt: skip
        manifest.calibration = confidence
        if statistics is not None:
            reference_record["sha256"] = reference_stats.write(statistics, staging)
        manifest.reference = reference_record
        manifest.write(staging)  # last: a version with a manifest is a complete version
        final: Path | str
        if isinstance(options.repository, Path):
            final = publish(staging, options.repository / options.name, options.version)
            manifest.version = int(final.name)
        else:
            try:
                manifest.version = publish_remote(staging, options.repository, options.name, options.version)
            except ManifestUncertain as exc:
                raise ExportError(str(exc)) from None
            except StorageError as exc:
                raise ExportError(f"{exc}; nothing was published") from None
            final = f"{options.repository}/{options.name}/{manifest.version}"
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        steps.abandon()
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:  # innermost first: leave the repository as it was
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    return ExportResult(final, manifest, warnings)


def _manifest(
    options: ExportOptions,
    run: rundir.RunRecord,
    labels: list[str],
    size: int,
    artifacts: list[repo.Artifact],
    labels_file: Path,
    embedding_size: int | None,
) -> repo.Manifest:
    tensors = [repo.TensorSpec(name=repo.OUTPUT_NAME, shape=[-1, len(labels)], dtype="float32")]
    embedding = {}
    if embedding_size is not None:
        embedding = {"name": repo.EMBEDDING_NAME, "shape": [-1, embedding_size], "dtype": "float32"}
    outputs = {t.name: {"dtype": t.dtype, "shape": list(t.shape)} for t in tensors}
    if embedding:
        outputs[repo.EMBEDDING_NAME] = {"dtype": "float32", "shape": [-1, embedding_size]}
    signatures = {
        repo.SIGNATURE_PIXELS: {
            "inputs": {repo.INPUT_NAME: {"dtype": "float32", "shape": [-1, size, size, 3]}},
            "outputs": outputs,
        },
        repo.SIGNATURE_IMAGES: {
            "inputs": {repo.IMAGES_INPUT_NAME: {"dtype": "string", "shape": [-1]}},
            "outputs": outputs,
        },
    }
    versions = dict(run.versions)
    import onnxruntime

    versions.update(tlserve_export=__version__, onnxruntime=onnxruntime.__version__)
    return repo.Manifest(
        name=options.name,
        version=options.version or 1,  # NOTE: set when it is published (publish.set_version)
        labels_sha256=repo.sha256_file(labels_file),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        labels=labels,
        input=repo.InputSpec(name=repo.INPUT_NAME, shape=[-1, size, size, 3], dtype="float32"),
        outputs=tensors,
        embedding=embedding,
        base={**run.base, "mode": run.mode},
        validation={
            "accuracy": run.accuracy,
            "loss": run.loss,
            "images": run.val_images,
            "macro_f1": run.macro_f1,
        },
        signatures=signatures,
        artifacts=artifacts,
        source={
            "run_dir": str(options.run_dir.resolve()),
            "model_sha256": repo.sha256_file(options.run_dir / rundir.MODEL_FILE),
            "versions": versions,
        },
    )


def _describe(artifact: repo.Artifact) -> str:
    parts = [f"{artifact.bytes / 2**20:.1f} MiB"]
    if "max_abs_diff" in artifact.parity:
        parts.append(f"max |diff| {artifact.parity['max_abs_diff']:.2g}")
    if "delta_points" in artifact.accuracy:
        parts.append(f"accuracy {artifact.accuracy['delta_points']:+.2f} pts")
    if artifact.latency_ms:
        parts.append(f"{artifact.latency_ms['batch1_p50']:.2f} ms")
    return ", ".join(parts)


def summary_table(result: ExportResult) -> str:
    header = (
        "artifact",
        "file",
        "size (MiB)",
        "parity max|diff| / top-1",
        "accuracy delta",
        "batch-1 ms",
        "use",
    )
    rows = []
    for a in result.manifest.artifacts:
        name = "savedmodel" if a.kind == "savedmodel" else f"onnx {a.precision}"
        parity = "-"
        if "max_abs_diff" in a.parity:
            parity = f"{a.parity['max_abs_diff']:.2e} / {a.parity['top1_agreement']:.3f}"
        delta = f"{a.accuracy['delta_points']:+.2f} pts" if "delta_points" in a.accuracy else "-"
        ms = f"{a.latency_ms['batch1_p50']:.2f}" if a.latency_ms else "-"
        if "speedup_vs_fp32" in a.latency_ms:  # NOTE: against fp32 timed in alternation with it
            paired, speedup = a.latency_ms["fp32_batch1_p50"], a.latency_ms["speedup_vs_fp32"]
            ms += f" (fp32 {paired:.2f} beside it: {speedup:.2f}x)"
        use = ", ".join(p.removesuffix("ExecutionProvider") for p in a.recommended_providers)
        if a.kind == "savedmodel":
            use = "TF Serving / tensorflow backend"
        elif not a.recommended:
            use = f"not recommended (see notes in {repo.MANIFEST_FILE})"
        rows.append((name, next(iter(a.files)), f"{a.bytes / 2**20:.2f}", parity, delta, ms, use))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if result.manifest.calibration:
        from tlserve.exporters.calibration import describe

        lines.append(f"scores: {describe(result.manifest.calibration)}")
    if result.manifest.reference:
        from tlserve.exporters import reference

        lines.append(f"reference statistics: {reference.describe(result.manifest.reference)}")
    return "\n".join(lines)
