"""``tlserve train``: check everything, then plan data, build, fit in phases, report, publish.

All checks that can fail on user input run before TensorFlow does any work, and the run dir is
written through ``rundir.atomic_dir``: an error or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from tlserve.errors import UsageError
from tlserve.training import quality, rundir
from tlserve.training.bases import base_names
from tlserve.training.config import MODES, TrainConfig
from tlserve.training.data import RESIZE_METHOD, VAL_SPLIT_RANGE, plan_dataset
from tlserve.training.resolve import resolve_base


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
