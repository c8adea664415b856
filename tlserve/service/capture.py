"""Hard-example capture: images from production written where ``tlserve train`` reads them.

After a request is answered, ``Capturer.offer`` picks its images that a trigger selects (a random
share, a top calibrated score below a threshold, a novelty above one: settings ``capture_*``, per
model) and queues them for one writer thread; nothing else happens on the request's path. The
writer puts each at ``capture_dir/MODEL/PREDICTED_LABEL/REQUEST_ID.EXT`` (the encoded bytes as they
were sent; pixel tensors as PNG) and appends a line to ``capture_dir/MODEL/captures.jsonl``:

    {"request_id": "...", "time": "2026-12-04T21:30:00.123Z", "model": "digits", "version": 2,
     "file": "digit_7/5f0c....png", "label": "digit_7", "top": [["digit_7", 0.41], ...],
     "novelty": 1.32, "trigger": ["low_confidence", "novelty"]}

``capture_dir/MODEL`` is then a training folder (one subfolder per class; ``tlserve train`` ignores
the jsonl): relabelling is moving files between class folders.

Never a failed request: the queue holds at most ``PENDING_BYTES`` (more images are dropped,
``queue_full``), the disk budget (``capture_max_bytes``, ``capture_max_files``, what is already
there included, re-counted every ``RESCAN_S`` once reached, so that files moved away free room)
drops the rest (``budget``), and a disk error (full, read-only, gone) drops that image (``failed``,
logged at most once a minute). A file is written under ``capture_dir/.partial`` and renamed into
its class folder, so a class folder never holds half an image.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tlserve.service import logs
from tlserve.service.domain import Prediction
from tlserve.service.metrics import Metrics
from tlserve.service.settings import ModelSettings, ServerSettings

log = logging.getLogger("tlserve.capture")

JSONL = "captures.jsonl"
PARTIAL = ".partial"
OUTCOMES = ("written", "budget", "queue_full", "failed")
PENDING_BYTES = 64 * 1024 * 1024
"""Images queued for the writer at once, in bytes; beyond it new ones are dropped (``queue_full``)."""
RESCAN_S = 30.0
"""Once the budget is reached, how often the folder is counted again (files moved away free room)."""
ERROR_LOG_S = 60.0
TOP = 5
"""Labels with their scores in each jsonl line."""
_EXTENSIONS = ((b"\xff\xd8", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Trigger:
    sample: float
    below: float | None
    novelty_above: float | None

    @classmethod
    def of(cls, settings: ModelSettings) -> Trigger | None:
        if not settings.captures:
            return None
        return cls(settings.capture_sample or 0.0, settings.capture_below, settings.capture_novelty_above)

    def reasons(self, top: np.ndarray, novelty: np.ndarray | None, draws: np.ndarray) -> list[list[str]]:
        """Per image, the triggers that pick it (empty: not captured)."""
        picked: list[tuple[str, np.ndarray]] = []
        if self.below is not None:
            picked.append(("low_confidence", top < self.below))
        if self.novelty_above is not None and novelty is not None:
            picked.append(("novelty", novelty > self.novelty_above))
        if self.sample > 0:
            picked.append(("sample", draws < self.sample))
        return [[name for name, hits in picked if hits[i]] for i in range(len(top))]


@dataclass
class Item:
    model: str
    version: int
    label: str
    stem: str
    data: bytes | np.ndarray
    """The encoded image, or pixels [H, W, 3] (RGB 0..255, float32 or uint8) to write as PNG."""
    record: dict[str, object]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.data) if isinstance(self.data, bytes) else int(self.data.nbytes)


def extension(data: bytes) -> str:
    """The file extension of an encoded image the server decoded (by its magic bytes)."""
    return next((ext for magic, ext in _EXTENSIONS if data.startswith(magic)), "img")


def safe_name(text: str, fallback: str) -> str:
    """``text`` as one path component: unsafe characters replaced, no leading dot, at most 100."""
    name = _UNSAFE.sub("_", text)[:100].lstrip(".")
    return name or fallback


def label_folder(label: str) -> str:
    """A class label as the folder ``tlserve train`` reads it back as (labels are the training
    folders' names, so normally itself; never a path outside the model's folder)."""
    if label in ("", ".", "..") or label.startswith(".") or "/" in label or "\\" in label or "\0" in label:
        return safe_name(label, "unnamed")
    return label


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


class Capturer:
    """One per server: ``offer`` on the event loop, a writer thread, ``close`` at shutdown."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        assert settings.capture_dir is not None
        self.settings = settings
        self.root = settings.capture_dir
        self.metrics = metrics
        self._rng = np.random.default_rng()
        self._triggers: dict[str, Trigger | None] = {}
        self._queue: deque[Item | None] = deque()
        self._ready = threading.Condition()
        self._pending = 0
        self.bytes = 0
        self.files = 0
        self._counted_at = -RESCAN_S
        self._journals: dict[Path, int] = {}
        """Per model folder, the file descriptor of its captures.jsonl (the writer's only)."""
        self._errors = 0
        self._error_logged_at = -ERROR_LOG_S
        self._warned: set[tuple[str, int]] = set()
        self._thread = threading.Thread(target=self._run, name="tlserve-capture", daemon=True)
        self._thread.start()

    # --- the event loop's side --------------------------------------------------------------------
    def offer(self, prediction: Prediction, inputs: np.ndarray | Sequence[bytes]) -> None:
        """Queue the images of an answered request that a trigger picks (never raises)."""
        try:
            self._offer(prediction, inputs)
        except Exception:  # NOTE: capture must never fail a request that was answered
            log.exception("capturing a request's images failed")

    def _offer(self, prediction: Prediction, inputs: np.ndarray | Sequence[bytes]) -> None:
        trigger = self._trigger(prediction.name)
        if trigger is None:
            return
        probabilities = prediction.probabilities
        best = probabilities.argmax(axis=1)
        top = probabilities[np.arange(len(best)), best]
        if trigger.novelty_above is not None and prediction.novelty is None:
            self._warn_no_novelty(prediction)
        reasons = trigger.reasons(top, prediction.novelty, self._rng.random(len(best)))
        if not any(reasons):
            return
        outcome = self.metrics.captures.labels
        rid = safe_name(logs.request_id.get(), uuid.uuid4().hex)
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        for i, why in enumerate(reasons):
            if not why:
                continue
            if self._full() and time.monotonic() - self._counted_at < RESCAN_S:  # else the writer recounts
                outcome(prediction.name, "budget").inc()
                continue
            # NOTE: copies (the request's buffers are not kept); tensors become PNG on the writer
            data = np.array(inputs[i]) if isinstance(inputs, np.ndarray) else bytes(inputs[i])
            label = prediction.labels[int(best[i])]
            order = np.argsort(-probabilities[i], kind="stable")[:TOP]
            record: dict[str, object] = {
                "request_id": logs.request_id.get() or rid, "time": stamp, "model": prediction.name,
                "version": prediction.version, "file": "", "label": label,
                "top": [[prediction.labels[int(j)], round(float(probabilities[i, j]), 6)] for j in order],
                "novelty": _finite(None if prediction.novelty is None else prediction.novelty[i]),
                "trigger": why,
            }  # fmt: skip
            stem = rid if len(reasons) == 1 else f"{rid}-{i}"
            item = Item(prediction.name, prediction.version, label, stem, data, record)
            with self._ready:
                if self._pending + item.size > PENDING_BYTES:
                    outcome(prediction.name, "queue_full").inc()
                    continue
                self._pending += item.size
                self._queue.append(item)
                self._ready.notify()

    def _full(self) -> bool:
        return self.files >= self.settings.capture_max_files or self.bytes >= self.settings.capture_max_bytes

    def _trigger(self, model: str) -> Trigger | None:
        if model not in self._triggers:
            self._triggers[model] = trigger = Trigger.of(self.settings.for_model(model))
            if trigger is not None:
                for outcome in OUTCOMES:  # NOTE: at 0 from the start: a first failure is an increase
                    self.metrics.captures.labels(model, outcome)
        return self._triggers[model]

    def _warn_no_novelty(self, prediction: Prediction) -> None:
        key = (prediction.name, prediction.version)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s version %d has no reference statistics: capture_novelty_above never "
                        "triggers for it", *key)  # fmt: skip

    # --- the writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        self._count()
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                item = self._queue.popleft()
            if item is None:
                for model_dir in list(self._journals):
                    self._close_journal(model_dir)
                return
            try:
                self._write(item)
            except Exception as exc:  # NOTE: a disk error drops this image; the writer goes on
                self.metrics.captures.labels(item.model, "failed").inc()
                self._failed(exc)
            finally:
                with self._ready:
                    self._pending -= item.size

    def _write(self, item: Item) -> None:
        data = item.data if isinstance(item.data, bytes) else png(_pixels(item.data))
        ext = extension(data)
        if not self._room(len(data)):
            self.metrics.captures.labels(item.model, "budget").inc()
            return
        model_dir = self.root / safe_name(item.model, "model")
        folder = model_dir / label_folder(item.label)
        partial = self.root / PARTIAL
        folder.mkdir(parents=True, exist_ok=True)
        partial.mkdir(exist_ok=True)
        staged = partial / f"{uuid.uuid4().hex}.{ext}"
        try:
            staged.write_bytes(data)
            final = _place(staged, folder, item.stem, ext)
        finally:
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)
        item.record["file"] = f"{folder.name}/{final.name}"
        line = (json.dumps(item.record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        try:
            self._append(model_dir, line)
        except Exception:
            with contextlib.suppress(OSError):  # NOTE: no image without its line
                final.unlink()
            raise
        self.files += 1
        self.bytes += len(data) + len(line)
        self._gauges()
        self.metrics.captures.labels(item.model, "written").inc()

    def _room(self, size: int) -> bool:
        limits = self.settings.capture_max_files, self.settings.capture_max_bytes
        if self.files + 1 <= limits[0] and self.bytes + size <= limits[1]:
            return True
        if time.monotonic() - self._counted_at >= RESCAN_S:
            self._count()
        return self.files + 1 <= limits[0] and self.bytes + size <= limits[1]

    def _count(self) -> None:
        """What is under the capture folder now (bytes of every file, images by their count); half
        written files a crash left behind are removed."""
        files = size = 0
        with contextlib.suppress(OSError):
            for entry in (self.root / PARTIAL).iterdir():
                with contextlib.suppress(OSError):
                    entry.unlink()
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                with contextlib.suppress(OSError):
                    size += os.stat(os.path.join(dirpath, name)).st_size
                    files += name != JSONL
        self.files, self.bytes, self._counted_at = files, size, time.monotonic()
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.capture_files.set(self.files)
        self.metrics.capture_bytes.set(self.bytes)

    def _append(self, model_dir: Path, line: bytes) -> None:
        """``line`` at the end of the folder's captures.jsonl in one write, or not at all: a short or
        failed write (a full disk) is cut off again, so the journal never holds half a line."""
        fd = self._journal(model_dir)
        end = os.fstat(fd).st_size
        if end and os.pread(fd, 1, end - 1) != b"\n":  # NOTE: a line an earlier failure could not cut
            line = b"\n" + line
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write to captures.jsonl")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise

    def _journal(self, model_dir: Path) -> int:
        path = model_dir / JSONL
        fd = self._journals.get(model_dir)
        if fd is not None:
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except OSError:  # NOTE: moved or deleted by hand: a new one
                pass
            self._close_journal(model_dir)
        fd = self._journals[model_dir] = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        return fd

    def _close_journal(self, model_dir: Path) -> None:
        fd = self._journals.pop(model_dir, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _failed(self, exc: Exception) -> None:
        self._errors += 1
        now = time.monotonic()
        if now - self._error_logged_at >= ERROR_LOG_S:
            log.warning("capture to %s failed (%d image(s) dropped since the last warning): %s",
                        self.root, self._errors, exc)  # fmt: skip
            self._errors, self._error_logged_at = 0, now

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout_s``; a writer still busy then finishes on its
        own, a daemon thread), then stop the writer. Blocks: call it off the event loop."""
        with self._ready:
            self._queue.append(None)
            self._ready.notify()
        self._thread.join(timeout_s)


def _finite(value: Any) -> float | None:
    """A JSON number, or None (JSON has no NaN or infinity)."""
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _pixels(image: np.ndarray) -> np.ndarray:
    """An RGB 0..255 image (float32 or uint8) as uint8."""
    return image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _place(staged: Path, folder: Path, stem: str, ext: str) -> Path:
    """Link ``staged`` into ``folder`` as ``stem.ext``, or ``stem-1.ext``... when the name is taken
    (a client reusing a request id, a file a labeller moved in): never over an existing file, but
    on a file system without hard links, where a file moved in under the same name between the
    check and the rename would be replaced."""
    n = 0
    while True:
        final = folder / (f"{stem}.{ext}" if n == 0 else f"{stem}-{n}.{ext}")
        try:
            os.link(staged, final)
            return final
        except FileExistsError:
            n += 1
        except OSError:  # NOTE: a file system without hard links
            if final.exists():
                n += 1
                continue
            os.replace(staged, final)
            return final
