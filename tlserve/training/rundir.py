"""The run-dir contract (what ``tlserve train`` writes) and writing it atomically.

    RUN_DIR/model.keras      loads with plain keras.models.load_model (built-in layers only)
            labels.txt       one label a line, in class-index order
            run.json         config, dataset, per-phase history, metrics, timings, versions
            history.png      loss, accuracy and learning rate per epoch; the kept epochs marked
            confusion.png    validation confusion matrix
            mistakes.png     the misclassified validation images with the highest loss

A run is written into a hidden sibling directory and renamed into place when complete, so an
interrupted or failed run leaves nothing half-written at ``RUN_DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tlserve.errors import UsageError, first_line

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
RUN_FILE = "run.json"
HISTORY_PLOT = "history.png"
CONFUSION_PLOT = "confusion.png"
MISTAKES_PLOT = "mistakes.png"
REQUIRED_FILES = (MODEL_FILE, LABELS_FILE, RUN_FILE)


def check_run_dir(path: Path) -> None:
    """Raise UsageError unless ``path`` is a complete run dir."""
    if not path.is_dir():
        raise UsageError(f"run dir {path} does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise UsageError(
            f"run dir {path} is incomplete: missing {', '.join(missing)} "
            f"(a complete run dir holds {', '.join(REQUIRED_FILES)})"
        )


def read_labels(path: Path) -> list[str]:
    # NOTE: split on "\n" only: str.splitlines() also splits on \x85, \u2028 and other separators.
    return [line for line in (path / LABELS_FILE).read_text(encoding="utf-8").split("\n") if line]


def read_run(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path / RUN_FILE} is not readable JSON: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path / RUN_FILE} does not hold a JSON object")
    return data


ASSUMED_LEARNING_RATE = 1e-3
"""For a .keras file with no run.json: Adam's default, what most Keras scripts train at."""


_BASE_TRAINING_PHASES = ("finetune", "scratch")


def trained_learning_rate(path: Path, _depth: int = 0) -> float | None:
    """The learning rate the convolutional layers of an earlier run dir (or .keras file) were last
    trained at; None when they are ImageNet weights no run of ours trained (a frozen run on an
    Application), so the ImageNet fine-tuning policy applies."""
    if not path.is_dir():
        return ASSUMED_LEARNING_RATE
    run = read_run(path)
    phases = [p for p in run.get("phases") or [] if isinstance(p, dict)]
    for phase in reversed(phases):
        rate = phase.get("learning_rate")
        if phase.get("name") in _BASE_TRAINING_PHASES and isinstance(rate, (int, float)) and rate > 0:
            return float(rate)
    base = run.get("base")
    if not isinstance(base, dict):
        base = {}
    earlier = base.get("earlier")
    if isinstance(earlier, str) and Path(earlier).is_dir() and _depth < 8:
        return trained_learning_rate(Path(earlier), _depth + 1)  # frozen on an earlier network
    if base.get("name"):
        return None
    return ASSUMED_LEARNING_RATE


def model_file(path: Path) -> Path:
    """The .keras file of a run dir, or ``path`` itself when it is a .keras file."""
    if path.is_dir():
        check_run_dir(path)
        return path / MODEL_FILE
    if path.suffix == ".keras" and path.is_file():
        return path
    raise UsageError(f"{path} is neither a run dir nor a .keras file")


def declared_input_shape(path: Path) -> list[int | None] | None:
    """The input shape a .keras file declares, read from its config without TensorFlow (None if
    the file does not say)."""
    try:
        with zipfile.ZipFile(model_file(path)) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path} is not a readable .keras model: {first_line(exc)}") from exc

    def find(node: Any) -> list[int | None] | None:
        children: list[Any]
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer":
                shape = node.get("config", {}).get("batch_shape")
                return list(shape) if shape is not None else None
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            return None
        for child in children:
            found = find(child)
            if found is not None:
                return found
        return None

    return find(config)


def load_run_model(path: Path) -> Any:
    """Load the Keras model of a run dir, or a ``.keras`` file, with a clear error otherwise."""
    import keras

    file = model_file(path)
    try:
        return keras.models.load_model(file, compile=False)
    except Exception as exc:
        raise UsageError(f"cannot load {file}: {first_line(exc)}") from exc


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; refuse a file or an unwritable parent."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; choose a new directory or pass --overwrite")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot create {out}: {parent} is not a writable directory")


def check_not_replacing(out: Path, inputs: dict[str, Path | None]) -> None:
    """Refuse an output dir that is, or contains, one of the inputs (or the working directory):
    replacing it on success would delete that input."""
    target = out.resolve()
    for what, path in {**inputs, "the current directory": Path.cwd()}.items():
        if path is None:
            continue
        source = path.resolve()
        if source == target or target in source.parents:
            raise UsageError(f"--out {out} would replace {what} ({path}); choose another directory")


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh hidden directory beside ``out``; on success it replaces ``out`` in one rename.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and ``out`` is
    left as it was.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the run dir should look like any other dir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "run")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
