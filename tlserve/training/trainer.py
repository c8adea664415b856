"""``tlserve train``: check everything, then plan data, build, fit in phases, report, publish.

All checks that can fail on user input run before TensorFlow does any work, and the run dir is
written through ``rundir.atomic_dir``: an error or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.errors import UsageError
from tlserve.training import quality, rundir
from tlserve.training.bases import BaseSpec, base_names, get_base
from tlserve.training.config import MODES, TrainConfig
from tlserve.training.data import RESIZE_METHOD, VAL_SPLIT_RANGE, DatasetPlan, plan_dataset


@dataclass
class ResolvedBase:
    spec: BaseSpec | None
    """The Keras Application, or None for an earlier network."""
    earlier: Path | None
    image_size: int
    earlier_lr: float | None = None
    """The rate an earlier network of the user's was trained at; None for ImageNet weights."""


def resolve_base(config: TrainConfig) -> ResolvedBase:
    """Check --base, --weights and --image-size without building anything."""
    # A table name wins over a same-named folder in the working directory; write ./NAME for that.
    is_table_name = config.base in base_names()
    looks_like_path = "/" in config.base or config.base.endswith(".keras") or Path(config.base).exists()
    if looks_like_path and not is_table_name:
        path = Path(config.base)
        if path.is_dir():
            rundir.check_run_dir(path)
        elif not (path.is_file() and path.suffix == ".keras"):
            raise UsageError(f"--base {path}: no such run dir or .keras file")
        if config.image_size is not None:
            raise UsageError(
                "--image-size cannot be used with an earlier network as base; it keeps its input size"
            )
        shape = rundir.declared_input_shape(path)
        if shape is not None and (
            len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]
        ):
            raise UsageError(
                f"--base {path}: the earlier network must take square RGB images [N, S, S, 3]; got {shape}"
            )
        return ResolvedBase(None, path, 0, rundir.trained_learning_rate(path))
    try:
        spec = get_base(config.base)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    size = config.image_size if config.image_size is not None else spec.default_size
    if size < spec.min_size:
        raise UsageError(
            f"--image-size {size} is below the minimum of {spec.name} ({spec.min_size}px); "
            f"use {spec.min_size} or more (default {spec.default_size})"
        )
    weights = config.weights
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise UsageError(f"--weights {weights}: expected imagenet, none or an existing .h5 file")
    if weights == "none" and config.mode != "scratch":
        # NOTE: a frozen random base gives features that carry almost nothing (BatchNorm in
        # inference mode makes most of them constant): the head learns chance, and that model
        # would export without a word.
        raise UsageError(
            f"--mode {config.mode} with --weights none would train on a frozen random network; "
            "use --mode scratch to train every layer, or --base RUN_DIR to reuse a network you trained"
        )
    if weights == "imagenet" and spec.imagenet_sizes and size not in spec.imagenet_sizes:
        sizes = "/".join(map(str, spec.imagenet_sizes))
        print(
            f"note: {spec.name}'s ImageNet weights exist for {sizes} px; at {size} px Keras loads "
            f"the {spec.default_size} px ones (the convolutions fit any size)",
            flush=True,
        )
    return ResolvedBase(spec, None, size)


def check_config(config: TrainConfig) -> None:
    if config.mode not in MODES:
        raise UsageError(f"--mode {config.mode!r}: expected one of {', '.join(MODES)}")
    at_least = {
        "--epochs": (1 if config.epochs is None else config.epochs, 1),
        "--batch-size": (config.batch_size, 1),
        "--fine-tune-epochs": (config.fine_tune_epochs or 0, 0),
        "--patience": (config.patience or 0, 0),
        "--hidden": (config.hidden, 0),
        "--cache-memory-mb": (config.cache_memory_mb, 0),
        "--seed": (config.seed, 0),
    }
    for flag, (value, low) in at_least.items():
        if value < low:
            raise UsageError(f"{flag} must be at least {low}; got {value}")
    if config.seed >= 2**32:
        raise UsageError(f"--seed must be below 2**32; got {config.seed}")
    if config.image_size is not None and config.image_size < 1:
        raise UsageError(f"--image-size must be a positive number of pixels; got {config.image_size}")
    if isinstance(config.unfreeze, int) and config.unfreeze < 1:
        raise UsageError(f"--unfreeze must be a positive number of layers or 'all'; got {config.unfreeze}")
    in_range = {
        "--dropout": (config.dropout, 0.0, 1.0),
        "--bn-momentum": (config.bn_momentum, 0.0, 1.0),
    }
    for flag, (fraction, floor, ceiling) in in_range.items():
        if not floor <= fraction < ceiling:
            raise UsageError(f"{flag} must be in [{floor:g}, {ceiling:g}); got {fraction}")
    # NOTE: one message for 0 and 1.5 (data.py says the same); with --val-data the split is unused
    if config.val_data is None and not 0.0 < config.val_split < 1.0:
        raise UsageError(VAL_SPLIT_RANGE.format(config.val_split))
    for flag, rate in {"--lr": config.lr, "--fine-tune-lr": config.fine_tune_lr}.items():
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise UsageError(f"{flag} must be a positive number; got {rate}")
    if config.mode != "finetune":
        ignored = {
            "--unfreeze": config.unfreeze != "auto",
            "--fine-tune-lr": config.fine_tune_lr is not None,
            "--fine-tune-epochs": config.fine_tune_epochs is not None,
        }
        for flag in (flag for flag, given in ignored.items() if given):
            print(f"note: {flag} is ignored in --mode {config.mode} (it applies to --mode finetune)")
    rundir.check_output_dir(config.out, config.overwrite)
    base_path = Path(config.base) if config.base not in base_names() else None
    rundir.check_not_replacing(
        config.out, {"DATA_DIR": config.data_dir, "--val-data": config.val_data, "--base": base_path}
    )


def class_weights(plan: DatasetPlan) -> dict[int, float]:
    """Balanced weights n / (k * n_c), as scikit-learn's class_weight='balanced'."""
    counts = np.asarray(plan.train.counts(len(plan.class_names)), dtype=np.float64)
    total, k = counts.sum(), len(counts)
    return {i: float(total / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def train(config: TrainConfig) -> dict[str, Any]:
    """Run a training job end to end; return the run.json content."""
    started = time.perf_counter()
    check_config(config)
    resolved = resolve_base(config)
    plan = plan_dataset(config.data_dir, config.val_split, config.val_data, config.seed)
    print(
        f"data: {len(plan.class_names)} classes, {len(plan.train)} train / {len(plan.val)} val images"
        f", {len(plan.skipped)} non-image files skipped, {len(plan.corrupt)} corrupt images skipped",
        flush=True,
    )
    scan_seconds = time.perf_counter() - started
    with rundir.atomic_dir(config.out) as work:
        from tlserve.training.session import TrainingSession

        session = TrainingSession(config, resolved, plan, work)
        report = session.run()
        report["timings"]["scan_seconds"] = round(scan_seconds, 3)
        report["timings"]["total_seconds"] = round(time.perf_counter() - started, 3)
        report["config"]["resize"] = f"{RESIZE_METHOD}, no antialias, aspect ratio not kept"
        session.write(report)
    metrics = report["metrics"]
    from tlserve.training.fit import kept_epoch_words

    kept = ", ".join(
        f"{p['name']}: {kept_epoch_words(p['kept_epoch'], p['epochs_run'])}" for p in report["phases"]
    )
    print(
        f"wrote {config.out}: val accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f} "
        f"({kept}), {report['timings']['total_seconds']:.1f}s",
        file=sys.stdout,
        flush=True,
    )
    warning = quality.summary_line(report["quality"])
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return report
