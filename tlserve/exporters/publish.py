"""Publishing a version into a model repository atomically, so that a server polling it never sees
half a version. In a directory: a staging dir made durable, then renamed to its version number. In
a bucket, which has no rename: the number is claimed by creating ``NAME/N/.tlserve-claim`` only if
no object has that name (a conditional write: S3's If-None-Match, GCS's ifGenerationMatch=0), so
two exports never take the same number; then every file is uploaded, the manifest last (servers see
a version once its manifest exists). The claim of a published version stays: deleting it would let
an exporter that listed before it take the number again. An upload that fails before the manifest
removes what it wrote, claim included (nothing was visible); one that fails while the manifest is
written leaves everything, since the manifest may have arrived and servers may be loading it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from contextlib import suppress
from pathlib import Path

from tlserve import repository as repo
from tlserve.errors import ExportError, UsageError
from tlserve.storage import CLAIM_FILE, Remote, StorageError


class ManifestUncertain(StorageError):
    """Writing the manifest failed in a way that may have written it: the version may be visible."""


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


def publish_remote(staging: Path, remote: Remote, name: str, version: int | None) -> int:
    """Upload the staging dir as a version of ``name`` (the given number, or the next free one,
    taking the one after when another export claims it first); the number it got."""
    number = version if version is not None else (remote.scan().taken(name) or [0])[-1] + 1
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    claim = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "created": created}) + "\n"
    for _ in range(1000):
        try:
            remote.create(f"{name}/{number}/{CLAIM_FILE}", claim.encode())
            break
        except FileExistsError:
            if version is not None:
                raise UsageError(
                    f"version {version} of {name} already exists in {remote}; versions are never overwritten"
                ) from None
            number += 1
    else:
        raise ExportError(f"no free version number found for {name} in {remote}")
    set_version(staging, number)
    manifest = staging / repo.MANIFEST_FILE
    files = {
        f"{name}/{number}/{p.relative_to(staging)}": p for p in sorted(staging.rglob("*")) if p.is_file()
    }
    try:
        remote.upload({key: path for key, path in files.items() if path != manifest})
    except BaseException:
        with suppress(StorageError):
            remote.remove(f"{name}/{number}")
        raise
    try:
        remote.upload({f"{name}/{number}/{repo.MANIFEST_FILE}": manifest})  # NOTE: last: now it is visible
    except StorageError as exc:
        raise ManifestUncertain(f"{exc} (version {number} may be published all the same: check for "
                                f"{remote}/{name}/{number}/{repo.MANIFEST_FILE})") from None  # fmt: skip
    return number
