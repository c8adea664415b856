"""Where the registry finds versions: a local directory, or a bucket mirrored into a local cache.

A source answers three questions for the registry (``registry.py``), all blocking (run them in a
worker thread): which models and versions exist (``scan``), whether a version changed since it was
last seen (``stamp``), and where its files are on this machine (``fetch``, then ``release`` once it
is unloaded). A local repository is read in place. A bucket is listed once per poll (one recursive
list, no manifest read); a version is downloaded only when the registry loads it, into a fresh
folder of the cache directory (``NAME/VERSION-xxxxxxxx``), deleted from there once it is unloaded
or fails to load, so the cache holds only what is served (plus one version while it loads). The
files are checked against the manifest's sha256 by the loader, as for a local repository.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tlserve import repository as repo
from tlserve.storage import Listing, Remote, Stamp, StorageError

log = logging.getLogger(__name__)
_COPY = re.compile(r"^[1-9][0-9]*-[A-Za-z0-9_]{8}$")
"""The name of a version's download in the cache: VERSION-<mkdtemp's 8 random characters>."""


@dataclass(frozen=True)
class Scan:
    """The repository as one scan saw it."""

    models: dict[str, list[int]]
    """Every model, with its visible versions ascending."""
    hint: str = ""
    """Why the repository looks misplaced (a model or version folder given instead), if it does."""


class Source(Protocol):
    def scan(self) -> Scan:
        """The models and versions now; raises StorageError when the store cannot be listed."""

    def stamp(self, name: str, number: int) -> Stamp:
        """Changes whenever a file of the version is added, removed or rewritten."""

    def fetch(self, name: str, number: int) -> Path:
        """A local directory holding the version's files; StorageError when they cannot be had."""

    def release(self, path: Path) -> None:
        """What ``fetch`` returned is no longer needed (unloaded, or failed to load): a copy made
        for it goes."""

    def interrupt(self) -> None:
        """The server is closing: a download in progress may stop (with StorageError)."""

    def close(self) -> None:
        """No version is needed any more."""

    def local_paths(self) -> list[str]:
        """Paths on this machine that must not reach clients in error messages."""


class LocalSource:
    """A repository directory on this machine, read in place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def scan(self) -> Scan:
        names: dict[str, list[int]] = {}
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                try:
                    if entry.is_dir() and not entry.name.startswith("."):
                        names[repo.check_model_name(entry.name)] = repo.versions(entry)
                except ValueError:
                    log.warning("ignoring %s: not a valid model name", entry)
        else:
            log.warning("model repository %s does not exist (yet)", self.root)
        return Scan(names, repo.misplaced_root(self.root))

    def stamp(self, name: str, number: int) -> Stamp:
        count = size = newest = 0
        try:
            for path in (self.root / name / str(number)).rglob("*"):
                info = path.stat()
                count, size, newest = count + 1, size + info.st_size, max(newest, info.st_mtime_ns)
        except OSError:
            return (-1, -1, -1)
        return count, size, newest

    def fetch(self, name: str, number: int) -> Path:
        return self.root / name / str(number)

    def release(self, path: Path) -> None:
        pass

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass

    def local_paths(self) -> list[str]:
        return [str(self.root)]


class RemoteSource:
    """A repository in object storage; versions are downloaded into ``cache_dir`` to be loaded."""

    def __init__(self, remote: Remote, cache_dir: Path | None) -> None:
        self.remote = remote
        # NOTE: absolute: release() compares the parents of mkdtemp's paths, absolute since 3.12
        self._given_cache = None if cache_dir is None else Path(os.path.abspath(cache_dir))
        self._interrupted = threading.Event()
        self._cache: Path | None = None
        self._listing = Listing({})

    @property
    def cache(self) -> Path:
        """The cache directory, made (or cleared of what a killed process left) on first use."""
        if self._cache is None:
            if self._given_cache is None:
                self._cache = Path(tempfile.mkdtemp(prefix="tlserve-cache-"))
            else:
                self._cache = self._given_cache
                for stale in self._cache.glob("*/*"):  # NOTE: only folders named as fetch names them
                    if _COPY.match(stale.name) and stale.is_dir():
                        shutil.rmtree(stale, ignore_errors=True)
        return self._cache

    def __str__(self) -> str:
        return str(self.remote)

    def scan(self) -> Scan:
        listing = self.remote.scan()
        self._listing = listing
        models = {}
        for name in sorted(listing.models):
            try:
                models[repo.check_model_name(name)] = listing.visible(name)
            except ValueError:
                log.warning("ignoring %s/%s: not a valid model name", self.remote, name)
        return Scan(models, listing.misplaced(str(self.remote)))

    def stamp(self, name: str, number: int) -> Stamp:
        return self._listing.stamp(name, number)

    def fetch(self, name: str, number: int) -> Path:
        files = self._listing.models.get(name, {}).get(number, {})
        if repo.MANIFEST_FILE not in files:
            raise StorageError(f"{self.remote}/{name}/{number}: its manifest is gone")
        unsafe = self._listing.unsafe.get((name, number))
        if unsafe is not None:  # NOTE: a key like "../x" or "//etc/x" must not become a local path
            raise ValueError(f"object {unsafe!r} of {name}/{number} would be written outside its folder")
        # NOTE: a folder of its own each time: the same version may still be draining from an
        # earlier copy (unloaded and picked again), whose release must not delete this one
        try:
            folder = self.cache / name
            folder.mkdir(parents=True, exist_ok=True)
            target = Path(tempfile.mkdtemp(prefix=f"{number}-", dir=folder))
        except OSError as exc:
            where = self._given_cache or tempfile.gettempdir()
            raise StorageError(f"cannot write to the cache in {where}: {exc.strerror or exc}") from None
        try:
            self.remote.download(name, number, files, target, self._interrupted)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    def release(self, path: Path) -> None:
        if self._cache is not None and path.parent.parent == self._cache and _COPY.match(path.name):
            shutil.rmtree(path, ignore_errors=True)

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        self._interrupted.set()
        if self._given_cache is None and self._cache is not None:
            shutil.rmtree(self._cache, ignore_errors=True)

    def local_paths(self) -> list[str]:
        return [str(self._cache)] if self._cache is not None else []


def open_source(repository: Path | Remote, cache_dir: Path | None) -> Source:
    if isinstance(repository, Remote):
        return RemoteSource(repository, cache_dir)
    return LocalSource(repository)
