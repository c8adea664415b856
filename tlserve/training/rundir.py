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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
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
    file = path / LABELS_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"run dir {path} is incomplete: missing {LABELS_FILE}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{file} is not readable UTF-8 text: {first_line(exc)}") from exc
    # NOTE: split on "\n" only: str.splitlines() also splits on \x85, \u2028 and other separators.
    return [line for line in text.split("\n") if line]


def read_run_json(path: Path) -> dict[str, Any]:
    """run.json as the trainer wrote it, whole (for a report that shows it); ``read_run`` for the
    parts tlserve acts on."""
    file = path / RUN_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"run dir {path} is incomplete: missing {RUN_FILE}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{file} is not readable JSON: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{file} does not hold a JSON object")
    return data


@dataclass(frozen=True)
class Phase:
    name: str | None
    learning_rate: float | None
    """None when run.json gives none (or not a positive number)."""


@dataclass(frozen=True)
class RunRecord:
    """What tlserve reads back from a run dir's run.json, each field checked once (``read_run``).

    A section or field that run.json lacks reads as empty or None: runs of older versions, or made
    by hand, lack some; one of the wrong type is a UsageError that names it."""

    run_dir: Path
    mode: str | None
    """config.mode: frozen, finetune or scratch."""
    base: Mapping[str, Any]
    """The base section as the trainer wrote it; the manifest carries it as is."""
    base_name: str | None
    """The Keras Application, None for an earlier network."""
    earlier: Path | None
    """The earlier run dir or .keras file used as base."""
    phases: tuple[Phase, ...]
    data_dir: Path | None
    val_data_dir: Path | None
    """The separate validation folder (--val-data); None when validation was split off data_dir."""
    val_files: tuple[str, ...]
    """The validation images, relative to val_data_dir (or data_dir); their first part is the class."""
    accuracy: float | None
    loss: float | None
    macro_f1: float | None
    val_images: int | None
    confusion_matrix: list[list[int]] | None
    """Validation confusion matrix as stored (rows: true class); ``quality.assess`` checks its shape."""
    quality: dict[str, Any] | None
    """The trainer's verdict (``quality.assess``); None when run.json has none with a boolean ``weak``."""
    versions: Mapping[str, Any]
    """Library versions the run was trained with."""

    @property
    def file(self) -> Path:
        return self.run_dir / RUN_FILE


def read_run(path: Path) -> RunRecord:
    """The run.json of run dir ``path``, checked; a UsageError naming the file and field otherwise."""
    run = _Fields(path / RUN_FILE, read_run_json(path))
    config, base, dataset, metrics = (run.section(name) for name in ("config", "base", "dataset", "metrics"))
    phases = run.objects("phases", run.data.get("phases"))
    verdict = run.data.get("quality")
    return RunRecord(
        run_dir=path,
        mode=run.string("config.mode", config.get("mode")),
        base=base,
        base_name=run.string("base.name", base.get("name")) or None,
        earlier=run.folder("base.earlier", base.get("earlier")),
        phases=tuple(
            Phase(run.string(f"phases[{i}].name", p.get("name")), _positive(p.get("learning_rate")))
            for i, p in enumerate(phases)
        ),
        data_dir=run.folder("dataset.data_dir", dataset.get("data_dir")),
        val_data_dir=run.folder("dataset.val_data_dir", dataset.get("val_data_dir")),
        val_files=run.strings("dataset.val_files", dataset.get("val_files")),
        accuracy=run.number("metrics.accuracy", metrics.get("accuracy")),
        loss=run.number("metrics.loss", metrics.get("loss")),
        macro_f1=run.number("metrics.macro_f1", metrics.get("macro_f1")),
        val_images=run.integer("metrics.images", metrics.get("images")),
        confusion_matrix=run.table("metrics.confusion_matrix", metrics.get("confusion_matrix")),
        quality=verdict if isinstance(verdict, dict) and isinstance(verdict.get("weak"), bool) else None,
        versions=run.section("versions"),
    )


class _Fields:
    """Typed reads of run.json's fields, each wrong one a UsageError that names it."""

    def __init__(self, file: Path, data: dict[str, Any]) -> None:
        self.file = file
        self.data = data

    def _bad(self, where: str, expected: str, value: object) -> UsageError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return UsageError(f"{self.file}: {where}: expected {expected}; got {shown}")

    def section(self, name: str) -> dict[str, Any]:
        value = self.data.get(name)
        if value is not None and not isinstance(value, dict):
            raise self._bad(name, "an object", value)
        return value or {}

    def objects(self, where: str, value: object) -> list[dict[str, Any]]:
        if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise self._bad(where, "a list of objects", value)
        return value or []

    def string(self, where: str, value: object) -> str | None:
        if value is not None and not isinstance(value, str):
            raise self._bad(where, "a string", value)
        return value

    def strings(self, where: str, value: object) -> tuple[str, ...]:
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise self._bad(where, "a list of strings", value)
        return tuple(value or ())

    def folder(self, where: str, value: object) -> Path | None:
        text = self.string(where, value)
        return Path(text) if text else None

    def number(self, where: str, value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(where, "a number", value)
        return float(value)

    def integer(self, where: str, value: object) -> int | None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._bad(where, "an integer", value)
        return value

    def table(self, where: str, value: object) -> list[list[int]] | None:
        """A list of rows of integers; its shape is checked where it is used (``quality.assess``)."""
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(row, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in row)
            for row in value
        ):
            raise self._bad(where, "a table of counts (lists of integers)", value)
        return value


def _positive(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


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
    for phase in reversed(run.phases):
        if phase.name in _BASE_TRAINING_PHASES and phase.learning_rate is not None:
            return phase.learning_rate
    if run.earlier is not None and run.earlier.is_dir() and _depth < 8:
        return trained_learning_rate(run.earlier, _depth + 1)  # frozen on an earlier network
    if run.base_name:
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
