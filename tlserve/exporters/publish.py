"""Publishing a version into a model repository atomically: a staging dir made durable, then renamed
to its version number, so that a server polling the repository never sees half a version."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tlserve import repository as repo
from tlserve.errors import ExportError, UsageError


def publish(staging: Path, model_dir: Path, version: int | None) -> Path:
    """Make the staging dir durable, then rename it to the version: the given one, or the next free
    number (retrying upwards when another export or a stray file takes it first)."""
    for path in [*staging.rglob("*"), staging]:
        fsync(path)
    number = version if version is not None else repo.next_version(model_dir)
    for _ in range(1000):
        final = model_dir / str(number)
        if not final.exists():
            set_version(staging, number)
            try:
                os.rename(staging, final)  # NOTE: fails on an existing non-empty dir: no overwrite
            except OSError:
                if not final.exists():
                    raise
            else:
                fsync(model_dir)
                return final
        if version is not None:
            raise UsageError(
                f"version {version} of {model_dir.name} appeared while exporting; it was not overwritten"
            )
        number += 1
    raise ExportError(f"no free version number found in {model_dir}")


def set_version(staging: Path, number: int) -> None:
    data = json.loads((staging / repo.MANIFEST_FILE).read_text(encoding="utf-8"))
    data["version"] = number
    (staging / repo.MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    fsync(staging / repo.MANIFEST_FILE)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
