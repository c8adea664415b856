"""``tlserve export RUN --repository s3://...`` against a real S3 API server (moto's, on 127.0.0.1):
a version appears complete or not at all, concurrent exports take distinct versions, a failed
upload leaves nothing visible, a bad bucket is refused before any work, and no local folder named
after the URL is ever made (a URL was once written as ./s3:/...)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.s3 import BUCKET, S3, s3_server
from tests.test_cli import assert_usage_error, run_cli
from tlserve import repository as repo
from tlserve.cli import main
from tlserve.exporters.publish import publish_remote
from tlserve.service.sources import RemoteSource
from tlserve.storage import CLAIM_FILE, Listing, Remote, StorageError

URL = f"s3://{BUCKET}/repo"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    with s3_server(monkeypatch) as server:
        yield server


def staged(tmp_path: Path, name: str) -> Path:
    from tests.service.tiny import publish

    version = publish(tmp_path / "build" / name, "colors", 1)
    return Path(shutil.copytree(version, tmp_path / name))


def test_concurrent_exports_take_distinct_versions(s3: S3, tmp_path: Path) -> None:
    stagings = [staged(tmp_path, f"s{i}") for i in range(4)]
    got: list[int] = []
    errors: list[BaseException] = []

    def export(staging: Path) -> None:
        try:
            got.append(publish_remote(staging, Remote(URL), "colors", None))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=export, args=(s,)) for s in stagings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and sorted(got) == [1, 2, 3, 4]
    remote = Remote(URL)
    for number in got:
        data = json.loads(remote.read(f"colors/{number}/{repo.MANIFEST_FILE}"))
        assert data["version"] == number


def test_an_export_that_listed_before_another_claimed_takes_the_next_number(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = Remote(URL)
    assert publish_remote(staged(tmp_path, "a"), remote, "colors", None) == 1
    monkeypatch.setattr(Remote, "scan", lambda self: Listing({}))  # a listing from before version 1
    assert publish_remote(staged(tmp_path, "b"), remote, "colors", None) == 2


def test_a_failed_upload_leaves_nothing_visible(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = Remote(URL)
    upload = Remote.upload

    def failing(manifest: bool) -> Callable[[Remote, dict[str, Path]], None]:
        def upload_but(self: Remote, files: dict[str, Path]) -> None:
            if any(key.endswith(repo.MANIFEST_FILE) for key in files) == manifest:
                raise StorageError("s3://models/repo: cannot upload: connection reset")
            upload(self, files)

        return upload_but

    monkeypatch.setattr(Remote, "upload", failing(manifest=False))
    with pytest.raises(StorageError):
        publish_remote(staged(tmp_path, "a"), remote, "colors", None)
    assert remote.scan().objects == {}  # its files and its claim removed
    # failing while the manifest is written: it may have arrived, so nothing is removed
    monkeypatch.setattr(Remote, "upload", failing(manifest=True))
    with pytest.raises(StorageError, match="version 1 may be published all the same"):
        publish_remote(staged(tmp_path, "b"), remote, "colors", None)
    listing = remote.scan()
    assert listing.visible("colors") == [] and CLAIM_FILE in listing.models["colors"][1]
    monkeypatch.setattr(Remote, "upload", upload)
    assert publish_remote(staged(tmp_path, "c"), remote, "colors", None) == 2  # 1 stays claimed


def test_export_to_a_bucket_end_to_end(
    s3: S3, tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "export", str(run_dir), "--repository", URL, "--name", "pets")
    assert code == 0, err
    assert f"published {URL}/pets/1" in out
    assert list(tmp_path.iterdir()) == [], "nothing local: no ./s3:/ folder, no staging left"
    listing = Remote(URL).scan()
    assert listing.visible("pets") == [1]
    assert not [key for key in listing.objects if "tlserve-probe" in key], "the write probe is removed"
    assert {CLAIM_FILE, repo.MANIFEST_FILE, "model.onnx", "saved_model.pb"} <= set(listing.models["pets"][1])
    source = RemoteSource(Remote(URL), tmp_path / "cache")
    source.scan()
    local = source.fetch("pets", 1)
    manifest = repo.Manifest.read(local)
    assert manifest.version == 1 and repo.verify_checksums(local, manifest) == []
    # the same run again is a duplicate, found by reading the bucket's manifests
    again = ["export", str(run_dir), "--repository", URL, "--name", "pets"]
    assert_usage_error(capsys, again, "already published")
    assert_usage_error(
        capsys, ["export", str(run_dir), "--repository", URL, "--name", "pets", "--version", "1"],
        "version 1 of pets already exists", "next free: 2",
    )  # fmt: skip


def test_a_bucket_that_cannot_be_written_is_refused_before_any_work(
    s3: S3, tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for url, said in [
        (f"s3://{BUCKET}-missing/repo", f"bucket '{BUCKET}-missing' does not exist"),
        ("nosuch://bucket/repo", "unknown protocol 'nosuch'"),
    ]:
        assert_usage_error(capsys, ["export", str(run_dir), "--repository", url, "--name", "pets"], said)
    for url, said in [  # refused by the parser
        ("s3:/models/repo", "a URL needs two slashes (s3://models/repo)"),
        ("s3://KEY:SECRET@models/repo", "no credentials in the URL"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(["export", str(run_dir), "--repository", url, "--name", "pets"])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and said in err and "SECRET" not in err, err

    def denied(self: Remote, relative: str, data: bytes) -> None:
        raise StorageError(f"{self}: cannot create {relative}: access denied")

    monkeypatch.setattr(Remote, "create", denied)  # credentials that may list but not write
    assert_usage_error(
        capsys, ["export", str(run_dir), "--repository", URL, "--name", "pets"],
        "access denied", "exporting needs list, get, put and delete",
    )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_an_export_whose_manifest_may_have_arrived_says_so(
    s3: S3, tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = Remote.upload

    def manifest_times_out(self: Remote, files: dict[str, Path]) -> None:
        upload(self, files)  # it arrives; the answer does not
        if any(key.endswith(repo.MANIFEST_FILE) for key in files):
            raise StorageError(f"{self}: cannot upload pets/1/...: ReadTimeoutError")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Remote, "upload", manifest_times_out)
    code, _, err = run_cli(capsys, "export", str(run_dir), "--repository", URL, "--name", "pets")
    assert code == 3 and "version 1 may be published all the same" in err, err
    assert "nothing was published" not in err
    assert Remote(URL).scan().visible("pets") == [1]
