"""``tlserve evaluate``: score a run's model on another labelled folder, print and save the metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.errors import UsageError
from tlserve.training import report, rundir
from tlserve.training.data import Split, find_corrupt, image_dataset, list_classes
from tlserve.training.metrics import classification_metrics, format_metrics

REPORT_FILE = "evaluation.json"


def evaluate(
    run_dir: Path, data_dir: Path, *, out: Path | None = None, batch_size: int = 32, overwrite: bool = False
) -> dict[str, Any]:
    """Score the run on ``data_dir``; the report goes to ``out`` (default: an ``evaluations/`` folder
    in the run dir, replaced on a re-run). A non-empty ``out`` of the user's is kept unless
    ``overwrite``."""
    rundir.check_run_dir(run_dir)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1; got {batch_size}")
    labels = rundir.read_labels(run_dir)
    classes, files, skipped = list_classes(data_dir)
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise UsageError(
            f"data dir {data_dir} has classes the model does not know: {', '.join(unknown)}; "
            f"the model's labels: {', '.join(labels)}"
        )
    all_paths = [p for name in classes for p in files[name]]
    corrupt = find_corrupt(all_paths)
    split = Split()
    for name in classes:
        good = [p for p in files[name] if p not in corrupt]
        split.paths += good
        split.labels += [labels.index(name)] * len(good)
    if not split.paths:
        raise UsageError(f"data dir {data_dir} has no readable image")
    target = out or run_dir / "evaluations" / data_dir.resolve().name
    rundir.check_output_dir(target, overwrite=overwrite or out is None)
    rundir.check_not_replacing(target, {"RUN_DIR": run_dir, "DATA_DIR": data_dir})

    model = rundir.load_run_model(run_dir)
    size = int(model.inputs[0].shape[1])
    started = time.perf_counter()
    probabilities = model.predict(
        image_dataset(split, size, batch_size, shuffle=False, seed=0, cache=False), verbose=0
    )
    metrics = classification_metrics(np.asarray(split.labels), probabilities, labels)
    result = {
        "run_dir": str(run_dir),
        "data_dir": str(data_dir),
        "images": len(split),
        "skipped_non_images": skipped,
        "corrupt_files": sorted(str(p) for p in corrupt),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 3),
        "versions": report.library_versions(),
    }
    print(format_metrics(metrics))
    with rundir.atomic_dir(target) as work:
        report.write_json(work / REPORT_FILE, result)
        report.plot_confusion(
            metrics["confusion_matrix"],
            labels,
            work / rundir.CONFUSION_PLOT,
            f"{data_dir.name}: accuracy {metrics['accuracy']:.3f}",
        )
    print(f"wrote {target}/{REPORT_FILE} and {rundir.CONFUSION_PLOT}")
    return result
