"""Where a model repository lives: a local directory, or a bucket named by a URL.

``s3://bucket/prefix``, ``gs://bucket/prefix`` and any other fsspec URL name a repository in object
storage (s3fs and gcsfs are the ``s3`` and ``gcs`` extras); anything without a scheme is a local path,
and ``file://PATH`` is one too. A URL is never taken for a path: ``s3://models`` must not become a
local folder named ``s3:``. Credentials come the standard way of each store (AWS_* variables,
~/.aws, instance or workload identity; GOOGLE_APPLICATION_CREDENTIALS, workload identity), fsspec's
``FSSPEC_S3_*`` / ``FSSPEC_GCS_*`` variables set filesystem options (an endpoint, anonymous access),
and a URL that holds any (``s3://KEY:SECRET@bucket``) is refused, so that nothing logs them.

A listing of the repository is one recursive list of its prefix (``Remote.scan``). A version in a
bucket is visible once its ``manifest.json`` exists: exporters upload every other file first
(``tlserve.exporters.publish``), since object stores have no rename.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tlserve import repository as repo
from tlserve.errors import UsageError, first_line

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ONE_SLASH = re.compile(r"^(s3|s3a|gs|gcs|file|https?|az|abfs):/(?!/)", re.I)
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
"""The tlserve extra that installs a protocol's filesystem."""
CLAIM_FILE = ".tlserve-claim"
"""Created (if absent, atomically) by an exporter to take a version number in a bucket; stays."""

_BATCH = 32
"""Files per request batch of a download (the server's stop is checked between batches)."""
Stamp = tuple[int, int, int]
"""(files, bytes, fingerprint) of a version: changes whenever one of its files does."""


class StorageError(OSError):
    """The object store could not be read or written (unreachable, denied, missing bucket); the
    message is one line, safe to log, without credentials."""


def is_url(text: str | Path) -> bool:
    return isinstance(text, str) and _SCHEME.match(text) is not None


def looks_like_url(text: str | Path) -> bool:
    """A URL, or one missing a slash (``s3:/bucket``): never to be taken for a local path."""
    return is_url(text) or (isinstance(text, str) and _ONE_SLASH.match(text) is not None)


def not_a_path(text: str) -> str:
    """Why ``text``, given where a local path is wanted, is refused (empty when it is not)."""
    if not looks_like_url(text):
        return ""
    return f"a URL ({text.split(':', 1)[0]}:...) where a path on this machine is wanted"


def location(text: str | Path) -> Path | Remote:
    """The repository ``text`` names: a local path, or a ``Remote`` for a URL (``file://`` is local).
    UsageError for what would be a mistake either way: credentials in a URL, ``s3:/x`` (one slash)."""
    if isinstance(text, Path):
        return text
    if _ONE_SLASH.match(text):
        fixed = _ONE_SLASH.sub(lambda m: f"{m.group(1)}://", text)
        raise UsageError(f"{text!r}: a URL needs two slashes ({fixed}); write ./{text} for a local path")
    if not is_url(text):
        return Path(text)
    scheme = text.index("://") + 3
    if text.lower().startswith("file://"):
        path = text[scheme:].removeprefix("localhost")
        if not path.startswith("/"):
            raise UsageError(f"{text!r}: a file:// URL names an absolute local path (file:///srv/models)")
        return Path(path)
    rest = text[scheme:]
    authority = rest.split("/", 1)[0]  # NOTE: a secret may hold "/": KEY:wJal/rXUtn@bucket
    if "@" in authority or (":" in authority and "@" in rest):
        raise UsageError(f"{text[:scheme]}...: no credentials in the URL (they would be logged); use the "
                         "store's own: AWS_* variables or profiles, GOOGLE_APPLICATION_CREDENTIALS, "
                         "workload identity")  # fmt: skip
    return Remote(text[:scheme].lower() + rest.rstrip("/"))


def _safe(path: str) -> bool:
    """A path inside a version that stays inside it when written below a local folder."""
    parts = path.split("/")
    return "\\" not in path and all(p not in ("", ".", "..") for p in parts)


@dataclass(frozen=True)
class Listing:
    """One listing of a bucket-backed repository: every object under its prefix, by path."""

    objects: dict[str, tuple[int, str]]
    """``{"NAME/VERSION/file": (bytes, etag or mtime)}``, relative to the repository root."""
    models: dict[str, dict[int, dict[str, tuple[int, str]]]] = field(init=False)
    """``{name: {version: {path in the version: (bytes, tag)}}}`` of every numbered version dir."""
    unsafe: dict[tuple[str, int], str] = field(init=False)
    """An object of a version whose key would escape its folder ("..", "//"), by version."""

    def __post_init__(self) -> None:
        models: dict[str, dict[int, dict[str, tuple[int, str]]]] = {}
        unsafe: dict[tuple[str, int], str] = {}
        for path, info in self.objects.items():
            parts = path.split("/", 2)
            if len(parts) < 2 or parts[0].startswith("."):
                continue
            versions = models.setdefault(parts[0], {})
            if len(parts) == 3 and repo.is_version_name(parts[1]):
                versions.setdefault(int(parts[1]), {})[parts[2]] = info
                if not _safe(parts[2]):
                    unsafe.setdefault((parts[0], int(parts[1])), parts[2])
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "unsafe", unsafe)

    def visible(self, name: str) -> list[int]:
        """The versions of ``name`` whose manifest exists (the others are being uploaded), ascending."""
        return sorted(v for v, files in self.models.get(name, {}).items() if repo.MANIFEST_FILE in files)

    def taken(self, name: str) -> list[int]:
        """Every version number of ``name`` with any object, visible or not, ascending."""
        return sorted(self.models.get(name, {}))

    def stamp(self, name: str, number: int) -> Stamp:
        files = self.models.get(name, {}).get(number, {})
        fingerprint = hash(frozenset(files.items()))
        return len(files), sum(size for size, _ in files.values()), fingerprint

    def misplaced(self, url: str) -> str:
        """Why the URL looks like a version or model folder rather than a repository (else empty)."""
        if repo.MANIFEST_FILE in self.objects:
            return f"{url} looks like a version folder (it holds {repo.MANIFEST_FILE}), not a repository"
        tops = {p.split("/", 1)[0] for p in self.objects if p.endswith(f"/{repo.MANIFEST_FILE}")}
        if any(repo.is_version_name(t) and f"{t}/{repo.MANIFEST_FILE}" in self.objects for t in tops):
            parent = url.rsplit("/", 1)[0]
            return f"{url} looks like a model folder, not a repository: pass --repository {parent}"
        return ""


@dataclass(frozen=True)
class Remote:
    """A repository in object storage, named by its URL (``s3://bucket/prefix``)."""

    url: str
    """Without credentials: ``location`` refuses a URL that holds any."""

    def __str__(self) -> str:
        return self.url

    @property
    def protocol(self) -> str:
        match = _SCHEME.match(self.url)
        assert match is not None
        return match.group(1).lower()

    @cached_property
    def _opened(self) -> tuple[Any, str]:
        try:
            import fsspec
            from fsspec.core import url_to_fs
        except ImportError:
            raise UsageError(f"{self} is a URL: install tlserve[{EXTRAS.get(self.protocol, 's3')}] to "
                             "use object storage") from None  # fmt: skip
        try:
            fs, root = url_to_fs(self.url, use_listings_cache=False, skip_instance_cache=True)
        except ImportError:
            extra = EXTRAS.get(self.protocol)
            hint = f"pip install 'tlserve[{extra}]'" if extra else "install the fsspec filesystem for it"
            raise UsageError(f"{self}: the {self.protocol}:// filesystem is not installed ({hint})") from None
        except ValueError:
            known = ", ".join(f"{p}://" for p in sorted(EXTRAS))
            raise UsageError(f"{self}: unknown protocol {self.protocol!r} (object storage: {known}; "
                             f"fsspec knows {len(fsspec.available_protocols())} more)") from None  # fmt: skip
        root = str(root).rstrip("/")
        if not root.strip("/"):
            raise UsageError(f"{self} names no bucket: use {self.protocol}://BUCKET[/PREFIX]")
        return fs, root

    @property
    def fs(self) -> Any:
        return self._opened[0]

    @property
    def root(self) -> str:
        return self._opened[1]

    def path(self, *parts: str | int) -> str:
        return "/".join([self.root, *map(str, parts)])

    def scan(self) -> Listing:
        """Every object under the prefix, in one recursive listing; StorageError if it fails (a
        missing prefix is an empty repository, a missing bucket an error)."""
        fs, root = self._opened
        bucket = _bucket(root)
        key = root[len(bucket) :].strip("/")
        try:
            # NOTE: the bucket with the prefix as a filter: find(root) of an empty prefix would
            # fall back to HeadObject on the prefix's own key, which a policy granting GetObject
            # on PREFIX/* only denies
            found = fs.find(bucket, prefix=f"{key}/", detail=True) if key else fs.find(bucket, detail=True)
        except FileNotFoundError:  # NOTE: s3fs and gcsfs say so of a missing bucket, not of a prefix
            raise StorageError(f"{self}: bucket {_bucket(root).strip('/')!r} does not exist (or is not "
                               "visible with these credentials)") from None  # fmt: skip
        except Exception as exc:  # NOTE: each store has its own errors (botocore, aiohttp, google-auth)
            raise self._error("cannot list", exc) from None
        prefix = root.rstrip("/") + "/"
        objects = {}
        for name, info in found.items():
            name = str(name)
            if info.get("type", "file") != "file" or not name.startswith(prefix) or name.endswith("/"):
                continue  # NOTE: "colors/2/" is the marker a console's "create folder" leaves
            tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation")
            tag = tag or str(
                info.get("LastModified")
                or info.get("mtime")
                or info.get("updated")
                or info.get("created")
                or ""
            )
            objects[name[len(prefix) :]] = (int(info.get("size") or 0), str(tag))
        return Listing(objects)

    def download(
        self, name: str, number: int, files: Iterable[str], target: Path, stop: threading.Event | None = None
    ) -> None:
        """Copy the version's ``files`` (paths in the version, each ``_safe``) into ``target``, a
        batch at a time; StorageError when ``stop`` is set (the server is closing) or the store fails."""
        pairs = [(self.path(name, number, f), target / f) for f in sorted(files)]
        try:
            for _, local in pairs:
                local.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write {name}/{number} to the cache: {exc.strerror or exc}") from None
        for start in range(0, len(pairs), _BATCH):
            if stop is not None and stop.is_set():
                raise StorageError(f"download of {name}/{number} abandoned: the server is closing")
            batch = pairs[start : start + _BATCH]
            try:
                self.fs.get([r for r, _ in batch], [str(loc) for _, loc in batch])
            except Exception as exc:
                raise self._error(f"cannot download {name}/{number}", exc) from None

    def upload(self, files: dict[str, Path]) -> None:
        """Copy local files to ``{path under the root: file}`` (concurrently, where the store can)."""
        if not files:
            return
        remote = list(files)
        try:
            self.fs.put([str(files[r]) for r in remote], [self.path(r) for r in remote])
        except Exception as exc:
            raise self._error(f"cannot upload {remote[0].rsplit('/', 1)[0]}/...", exc) from None

    def create(self, relative: str, data: bytes) -> None:
        """Write an object only if none has that path (atomically, by a conditional write);
        FileExistsError if one has."""
        for attempt in range(6):
            try:
                self.fs.pipe_file(self.path(relative), data, mode="create")
                return
            except FileExistsError:
                raise
            except Exception as exc:
                code = _error_code(exc)
                if code == "PreconditionFailed":  # NOTE: s3fs maps it only when it names If-None-Match
                    raise FileExistsError(relative) from None
                if code != "ConditionalRequestConflict" or attempt == 5:
                    raise self._error(f"cannot create {relative}", exc) from None
                # NOTE: S3 answers 409 to a conditional write racing another on the same key: retry
                time.sleep(0.1 * 2**attempt)

    def read(self, relative: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(relative)))
        except Exception as exc:
            raise self._error(f"cannot read {relative}", exc) from None

    def remove(self, relative: str) -> None:
        """Delete every object under ``relative`` (best effort: what is left stays invisible)."""
        try:
            self.fs.rm(self.path(relative), recursive=True)
        except Exception as exc:
            raise self._error(f"cannot remove {relative}", exc) from None

    def _error(self, doing: str, exc: BaseException) -> StorageError:
        reason = first_line(exc, 200)
        if isinstance(exc, PermissionError):
            reason = f"access denied ({reason}); check the credentials"
        return StorageError(f"{self}: {doing}: {type(exc).__name__}: {reason}")


def _error_code(exc: BaseException) -> str:
    """The store's error code behind a filesystem's exception (botocore's ClientError), if any."""
    for cause in (exc, exc.__cause__, exc.__context__):
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _bucket(root: str) -> str:
    """The bucket part of a filesystem path (with the leading "/" of filesystems that have one)."""
    return ("/" if root.startswith("/") else "") + root.strip("/").split("/", 1)[0]
