"""Repository locations: URLs are never paths, a bucket's listing, and a gs:// repository followed by
the registry through a fake filesystem (an in-memory one registered for gs://; a real GCS is not
exercised here, docs/deploy.md says so)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.s3 import upload_tiny
from tlserve import repository as repo
from tlserve.errors import UsageError
from tlserve.exporters.publish import publish_remote
from tlserve.service.registry import ModelRegistry
from tlserve.service.settings import ServerSettings
from tlserve.storage import CLAIM_FILE, Listing, Remote, location

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402


class FakeGCS(MemoryFileSystem):
    """gs:// and gcs:// URLs kept in memory, with conditional creates as GCS does them."""

    protocol = ("gs", "gcs")
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return str(super()._strip_protocol(path))


@pytest.fixture
def gcs() -> Iterator[type[FakeGCS]]:
    from fsspec.registry import _registry, register_implementation

    before = {p: _registry.get(p) for p in FakeGCS.protocol}
    for protocol in FakeGCS.protocol:
        register_implementation(protocol, FakeGCS, clobber=True)
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    FakeGCS().mkdir("/bucket")
    yield FakeGCS
    for protocol, implementation in before.items():
        if implementation is None:
            _registry.pop(protocol, None)
        else:
            register_implementation(protocol, implementation, clobber=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models", Path("models")),
        ("./s3:/models", Path("s3:/models")),
        ("file://localhost/srv/models", Path("/srv/models")),
        ("file:///srv/models", Path("/srv/models")),
        ("s3://bucket/prefix/", Remote("s3://bucket/prefix")),
        ("S3://Bucket/Prefix", Remote("s3://Bucket/Prefix")),
        ("gs://bucket", Remote("gs://bucket")),
    ],
)
def test_a_url_is_never_a_path(text: str, expected: object) -> None:
    assert location(text) == expected


@pytest.mark.parametrize(
    "url",
    [
        "s3://KEY:SECRET@bucket/repo",
        "s3://KEY:wJal/rXUtn@bucket/repo",
        "gs://token@bucket/x",
        "s3://k:p@ss@b/r",
    ],
)
def test_credentials_in_a_url_are_refused_before_anything_could_log_them(url: str) -> None:
    with pytest.raises(UsageError, match="no credentials in the URL") as refused:
        location(url)
    assert "SECRET" not in str(refused.value) and "rXUtn" not in str(refused.value)
    with pytest.raises(ValueError, match="no credentials in the URL"):
        ServerSettings(repository=url)


@pytest.mark.parametrize(
    ("text", "said"),
    [("s3:/bucket/repo", "needs two slashes (s3://bucket/repo)"), ("file://host/srv", "absolute local path")],
)
def test_near_urls_are_refused_rather_than_made_paths(text: str, said: str) -> None:
    for fine in ("s3://b/pre:fix/x@y", "gs://b/2024-01-01T00:00:00@v1"):  # ':' and '@' in a prefix
        assert isinstance(location(fine), Remote)
    with pytest.raises(UsageError, match=re.escape(said)):
        location(text)
    assert location("file://localhost/srv/models") == Path("/srv/models")
    assert location("./s3:/bucket") == Path("s3:/bucket")


def test_settings_that_take_paths_refuse_urls() -> None:
    for setting in ("repository_cache_dir", "tensorrt_cache_dir", "tls_cert_file"):
        with pytest.raises(ValueError, match="where a path on this machine is wanted"):
            ServerSettings(**{setting: "s3://bucket/x"})
        with pytest.raises(ValueError, match="where a path on this machine is wanted"):
            ServerSettings(**{setting: "s3:/bucket/x"})


def test_unknown_protocols_and_missing_filesystems_are_one_line_usage_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(UsageError, match=r"unknown protocol 'nosuch' \(object storage: gcs://, gs://, s3://"):
        Remote("nosuch://bucket/x").scan()
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if the gcs extra were not installed
    missing = r"gs:// filesystem is not installed \(pip install 'tlserve\[gcs\]'\)"
    with pytest.raises(UsageError, match=missing):
        Remote("gs://bucket/x").scan()
    with pytest.raises(UsageError, match="names no bucket"):
        Remote("s3://").scan()


def test_a_listing_shows_versions_once_their_manifest_exists() -> None:
    listing = Listing({
        "colors/1/manifest.json": (10, "a"), "colors/1/model.onnx": (100, "b"),
        "colors/2/model.onnx": (100, "c"), "colors/2/.tlserve-claim": (5, "d"),
        "colors/03/manifest.json": (10, "e"), "colors/.staging/manifest.json": (1, "f"),
        ".hidden/1/manifest.json": (1, "g"), "README": (1, "h"),
    })  # fmt: skip
    assert listing.visible("colors") == [1] and listing.taken("colors") == [1, 2]
    assert sorted(listing.models) == ["colors"]  # a file at the top is no model, as in a directory
    before = listing.stamp("colors", 1)
    changed = Listing({**listing.objects, "colors/1/model.onnx": (100, "b2")})
    assert before[:2] == (2, 110) and changed.stamp("colors", 1) != before
    assert listing.misplaced("s3://b/repo") == ""
    model_folder = Listing({"1/manifest.json": (1, "a"), "1/model.onnx": (1, "b")})
    assert "looks like a model folder" in model_folder.misplaced("s3://b/repo/colors")
    assert "pass --repository s3://b/repo" in model_folder.misplaced("s3://b/repo/colors")
    assert "looks like a version folder" in Listing({"manifest.json": (1, "a")}).misplaced("s3://b/x")


def gs_registry(cache: Path) -> ModelRegistry:
    """A registry following gs://bucket/repo, downloading into ``cache``."""
    settings = ServerSettings(repository="gs://bucket/repo", repository_cache_dir=cache, max_batch_size=4)
    return ModelRegistry(settings, ThreadPoolExecutor(1))


def downloads(cache: Path) -> list[str]:
    """The versions with a download in the cache (``colors/VERSION-xxxxxxxx``)."""
    return sorted(p.name.split("-")[0] for p in (cache / "colors").iterdir())


def test_a_gs_repository_is_followed_like_a_directory(gcs: type[FakeGCS], tmp_path: Path) -> None:
    remote = Remote("gs://bucket/repo")
    upload_tiny(remote, "colors", 1)
    upload_tiny(remote, "colors", 2, manifest=False)  # being uploaded: invisible
    cache = tmp_path / "cache"

    async def main() -> None:
        registry = gs_registry(cache)
        await registry.poll()
        assert sorted(registry.models["colors"].serving) == [1]
        assert downloads(cache) == ["1"]
        upload_tiny(remote, "colors", 2)
        await registry.poll()
        assert sorted(registry.models["colors"].serving) == [2]
        for _ in range(50):  # the retired version drains, then its download is deleted
            if downloads(cache) == ["2"]:
                break
            await asyncio.sleep(0.02)
        assert downloads(cache) == ["2"]
        await registry.close()
        assert downloads(cache) == []

    asyncio.run(main())


def test_exports_to_a_bucket_take_distinct_versions_and_appear_complete(
    gcs: type[FakeGCS], tmp_path: Path
) -> None:
    from tests.service.tiny import publish

    remote = Remote("gs://bucket/repo")
    source = publish(tmp_path / "local", "colors", 1)
    numbers = []
    for i in range(3):
        staging = tmp_path / f"staging{i}"
        staging.mkdir()
        for f in source.iterdir():
            (staging / f.name).write_bytes(f.read_bytes())
        numbers.append(publish_remote(staging, remote, "colors", None))
    listing = remote.scan()
    assert numbers == [1, 2, 3] and listing.visible("colors") == [1, 2, 3]
    for number in numbers:
        files = listing.models["colors"][number]
        assert CLAIM_FILE in files and repo.MANIFEST_FILE in files
        manifest = repo.Manifest.from_dict(json.loads(remote.read(f"colors/{number}/manifest.json")))
        assert manifest.version == number
    with pytest.raises(UsageError, match="version 2 of colors already exists in gs://bucket/repo"):
        publish_remote(staging, remote, "colors", 2)


def test_a_version_picked_again_while_it_drains_keeps_its_new_download(
    gcs: type[FakeGCS], tmp_path: Path
) -> None:
    remote = Remote("gs://bucket/repo")
    upload_tiny(remote, "colors", 1)
    cache = tmp_path / "cache"

    async def main() -> None:
        registry = gs_registry(cache)
        await registry.poll()
        with registry.lease("colors") as first:  # a request holds version 1: it cannot drain
            upload_tiny(remote, "colors", 2)
            await registry.poll()
            remote.remove("colors/2")  # version 2 withdrawn: version 1 is picked again
            await registry.poll()
            again = registry.resolve("colors")
            assert again.version == 1 and again is not first and again.path != first.path
        for _ in range(50):
            if not first.path.exists():
                break
            await asyncio.sleep(0.02)
        assert not first.path.exists() and (again.path / repo.MANIFEST_FILE).is_file()
        assert downloads(cache) == ["1"]
        await registry.close()

    asyncio.run(main())


def test_downloads_a_killed_server_left_are_cleared_and_nothing_else(
    gcs: type[FakeGCS], tmp_path: Path
) -> None:
    from tlserve.service.sources import RemoteSource

    remote = Remote("gs://bucket/repo")
    upload_tiny(remote, "colors", 1)
    cache = tmp_path / "cache"
    (cache / "colors" / "1-abcd_123").mkdir(parents=True)  # as fetch names a download
    (cache / "colors" / "notes").mkdir()  # not ours
    source = RemoteSource(remote, cache)
    source.scan()
    path = source.fetch("colors", 1)
    assert sorted(p.name for p in (cache / "colors").iterdir()) == sorted([path.name, "notes"])
    source.release(path)
    source.release(cache / "colors" / "notes")  # not a download: kept
    assert sorted(p.name for p in (cache / "colors").iterdir()) == ["notes"]


def test_a_version_with_an_object_outside_its_folder_fails_and_writes_nothing_outside(
    gcs: type[FakeGCS], tmp_path: Path
) -> None:
    remote = Remote("gs://bucket/repo")
    upload_tiny(remote, "colors", 1)
    upload_tiny(remote, "colors", 2)
    remote.fs.pipe_file(remote.path("colors/2/../../escaped"), b"x")  # a key, not a path, in a bucket
    listing = remote.scan()
    assert listing.unsafe == {("colors", 2): "../../escaped"}

    async def main() -> None:
        registry = gs_registry(tmp_path / "cache")
        await registry.poll()
        record = registry.models["colors"].versions[2]
        assert record.state.name == "FAILED" and "outside its folder" in record.error
        assert sorted(registry.models["colors"].serving) == [1]
        await registry.close()

    asyncio.run(main())
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing escaped, nothing left


def test_a_download_that_fails_backs_off_and_is_tried_at_once_when_the_version_changes(
    gcs: type[FakeGCS], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlserve.storage import StorageError

    remote = Remote("gs://bucket/repo")
    upload_tiny(remote, "colors", 1)
    attempts = []

    def failing(self: Remote, name: str, number: int, *args: object) -> None:
        attempts.append(number)
        raise StorageError("gs://bucket/repo: cannot download colors/1: access denied")

    async def main() -> None:
        registry = gs_registry(tmp_path / "cache")
        with monkeypatch.context() as patched:
            patched.setattr(Remote, "download", failing)
            await registry.poll()
            record = registry.models["colors"].versions[1]
            assert record.state.name == "FAILED" and "not downloaded (tried again in 2 s)" in record.error
            await registry.poll()  # within the backoff: not tried again
            assert attempts == [1] and not registry.models["colors"].serving
            registry._unfetched[("colors", 1)] = (*registry._unfetched[("colors", 1)][:2], 0.0)  # time passes
            await registry.poll()
            assert attempts == [1, 1] and "tried again in 4 s" in registry.models["colors"].versions[1].error
            registry._unfetched[("colors", 1)] = (registry.source.stamp("colors", 1), 5000, 0.0)
            await registry.poll()  # the 5001st failure: the wait stays at its cap
            assert "tried again in 300 s" in registry.models["colors"].versions[1].error
            upload_tiny(remote, "colors", 1, scale=0.03)  # changed: tried at once, the count reset
            await registry.poll()
            assert len(attempts) == 4 and "tried again in 2 s" in registry.models["colors"].versions[1].error
        upload_tiny(remote, "colors", 1)
        await registry.poll()
        assert sorted(registry.models["colors"].serving) == [1] and registry._unfetched == {}
        await registry.close()

    asyncio.run(main())


def test_folder_markers_of_a_console_are_not_files(gcs: type[FakeGCS]) -> None:
    remote = Remote("gs://bucket/repo")
    upload_tiny(remote, "colors", 2)
    for marker in ("colors/", "colors/2/", "colors/2/assets/"):  # zero-byte "create folder" objects
        FakeGCS.store[f"/bucket/repo/{marker}"] = FakeGCS.store[f"/bucket/repo/colors/2/{repo.LABELS_FILE}"]
    listing = remote.scan()
    assert listing.unsafe == {} and listing.visible("colors") == [2]
    assert not [p for p in listing.objects if p.endswith("/")]


def test_an_interrupted_download_stops_between_batches(gcs: type[FakeGCS], tmp_path: Path) -> None:
    from tlserve.service.sources import RemoteSource
    from tlserve.storage import StorageError

    remote = Remote("gs://bucket/repo")
    upload_tiny(remote, "colors", 1)
    source = RemoteSource(remote, tmp_path / "cache")
    source.scan()
    source.interrupt()  # what SIGTERM does
    with pytest.raises(StorageError, match="abandoned: the server is closing"):
        source.fetch("colors", 1)
    assert list((tmp_path / "cache" / "colors").iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "s3://bucket/data", "--out", "run"],
        ["train", "data", "--out", "gs://bucket/run"],
        ["serve", "--repository", "s3://b/r", "--tls-cert-file", "s3:/b/cert.pem"],
        ["bench", "--model", "m", "--repository", "s3://b/r"],
    ],
)
def test_cli_paths_refuse_urls(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from tlserve.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "a URL (" in err and "where a path on this machine is wanted" in err, (
        err
    )


class _Refusing:
    """A filesystem whose conditional create fails as a store would, ``codes`` in turn."""

    def __init__(self, codes: list[str]) -> None:
        self.codes = codes
        self.calls = 0

    def pipe_file(self, path: str, data: bytes, mode: str) -> None:
        self.calls += 1
        if self.codes:
            error = OSError("refused")
            error.__cause__ = type(
                "ClientError", (Exception,), {"response": {"Error": {"Code": self.codes.pop(0)}}}
            )()
            raise error


def test_conditional_creates_retry_a_409_and_read_any_412_as_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = Remote("s3://bucket/repo")
    fs = _Refusing(["ConditionalRequestConflict", "ConditionalRequestConflict"])
    monkeypatch.setattr(Remote, "_opened", (fs, "bucket/repo"))
    remote.create("colors/1/.tlserve-claim", b"{}")
    assert fs.calls == 3
    fs.codes, fs.calls = ["PreconditionFailed"], 0
    with pytest.raises(FileExistsError):
        remote.create("colors/1/.tlserve-claim", b"{}")
    fs.codes = ["AccessDenied"]
    with pytest.raises(OSError, match=r"cannot create colors/1/\.tlserve-claim"):
        remote.create("colors/1/.tlserve-claim", b"{}")
