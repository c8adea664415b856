"""The model-repository contract, as the server will use it: no TensorFlow, strict names, versions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tlserve import repository as repo


def test_importable_without_tensorflow_or_onnxruntime() -> None:
    code = (
        "import sys, tlserve.repository; "
        "heavy = [m for m in ('tensorflow', 'keras', 'onnxruntime', 'onnx') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["digits", "resnet50_v2", "a.b-c", "X1"])
def test_safe_names(name: str) -> None:
    assert repo.check_model_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", ".hidden", "-flag", "a b", "x" * 129, "é"])
def test_unsafe_names(name: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        repo.check_model_name(name)


def test_versions_ignore_staging_and_other_entries(tmp_path: Path) -> None:
    model = tmp_path / "m"
    for name in ["1", "2", "10", "010", "0", ".staging-abc", "latest", "3x"]:
        (model / name).mkdir(parents=True)
    (model / "7").write_text("a file, not a version")
    assert repo.versions(model) == [1, 2, 10]
    assert repo.next_version(model) == 11
    assert repo.next_version(tmp_path / "new") == 1


def minimal_manifest() -> dict[str, object]:
    return {
        "schema": 1,
        "name": "m",
        "version": 1,
        "created": "2026-11-28T00:00:00+00:00",
        "labels": ["a", "b"],
        "input": {"name": "image", "shape": [-1, 32, 32, 3], "dtype": "float32"},
        "outputs": [{"name": "probabilities", "shape": [-1, 2], "dtype": "float32"}],
        "base": {},
        "validation": {},
        "signatures": {},
        "artifacts": [{"kind": "onnx", "files": {"model.onnx": "0" * 64}, "bytes": 1}],
    }


def test_manifest_round_trip_and_checks(tmp_path: Path) -> None:
    manifest = repo.Manifest.from_dict(minimal_manifest())
    assert manifest.image_size == (32, 32) and manifest.artifact("onnx") is not None
    manifest.write(tmp_path)
    assert repo.Manifest.read(tmp_path) == manifest
    bad = minimal_manifest() | {"labels": ["only one"]}
    with pytest.raises(repo.ManifestError, match="number of labels"):
        repo.Manifest.from_dict(bad)
    with pytest.raises(repo.ManifestError, match="schema"):
        repo.Manifest.from_dict(minimal_manifest() | {"schema": 99})
    with pytest.raises(repo.ManifestError, match="invalid manifest"):
        repo.Manifest.from_dict({k: v for k, v in minimal_manifest().items() if k != "labels"})
    broken_artifact = {"kind": "onnx", "files": {"../../etc/passwd": "0" * 64}, "bytes": 1}
    for bad_value, message in [
        ({"artifacts": [broken_artifact]}, "leaves the version dir"),
        ({"artifacts": [{**broken_artifact, "files": {"model.onnx": "x"}}]}, "not a sha256"),
        ({"artifacts": [{**broken_artifact, "files": {"m.onnx": "0" * 64}, "precision": "int9"}]}, "int9"),
        ({"outputs": []}, "one output"),
        ({"embedding": {"name": "logits", "shape": [-1, 8], "dtype": "float32"}}, "embedding must be"),
        ({"embedding": {"name": "embedding", "shape": [-1], "dtype": "float32"}}, "embedding must be"),
        ({"embedding": {"name": "embedding", "shape": [-1, 0], "dtype": "float32"}}, "embedding must be"),
        ({"input": {"name": "image", "shape": 5, "dtype": "float32"}}, "invalid manifest"),
        ({"artifacts": []}, "no artifacts"),
    ]:
        with pytest.raises(repo.ManifestError, match=message):
            repo.Manifest.from_dict(minimal_manifest() | bad_value)
    with pytest.raises(repo.ManifestError, match="JSON object"):
        repo.Manifest.from_dict([1, 2])
    (tmp_path / "7").mkdir()
    manifest.write(tmp_path / "7")
    copied = repo.Manifest.read(tmp_path / "7")  # the directory names the version; this is provenance
    assert copied == manifest and copied.exported_as == "m/1"
    (tmp_path / "manifest.json").write_text("{ truncated")
    with pytest.raises(repo.ManifestError, match="cannot read"):
        repo.Manifest.read(tmp_path)
    assert json.loads(json.dumps(manifest.to_dict()))["name"] == "m"


def test_a_copied_version_keeps_its_checksums(tmp_path: Path) -> None:
    """Copying a version folder publishes it; its files are still checked against the manifest."""
    source = tmp_path / "digits" / "2"
    source.mkdir(parents=True)
    (source / "model.onnx").write_bytes(b"onnx bytes")
    (source / repo.LABELS_FILE).write_text("a\nb\n")
    data = minimal_manifest() | {"name": "digits", "version": 2}
    data["artifacts"] = [{"kind": "onnx", "files": repo.file_digests(source, ["model.onnx"]), "bytes": 10}]
    data["labels_sha256"] = repo.sha256_file(source / repo.LABELS_FILE)
    repo.Manifest.from_dict(data).write(source)
    copy = tmp_path / "digits-canary" / "1"
    shutil.copytree(source, copy)
    manifest = repo.Manifest.read(copy)
    assert manifest.exported_as == "digits/2" and repo.verify_checksums(copy, manifest) == []
    (copy / "model.onnx").write_bytes(b"tampered!!")
    (copy / repo.LABELS_FILE).write_text("b\na\n")
    assert sorted(repo.verify_checksums(copy, manifest)) == [repo.LABELS_FILE, "model.onnx"]


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("models/shapes", "{tmp}/models/shapes looks like a model directory, not a repository: "
                          "pass --repository {tmp}/models"),
        ("models/shapes/2", "{tmp}/models/shapes/2 looks like a version directory (it holds manifest.json), "
                            "not a repository: pass --repository {tmp}/models"),
        ("runs/shapes", "{tmp}/runs/shapes looks like a training run directory (it holds run.json), not a "
                        "repository: export it (tlserve export {tmp}/runs/shapes --repository REPO --name "
                        "NAME), then pass --repository REPO"),
        ("models", ""),
        ("missing", ""),
    ],
)  # fmt: skip
def test_a_path_one_level_too_deep_is_recognised(tmp_path: Path, given: str, says: str) -> None:
    version = tmp_path / "models" / "shapes" / "2"
    version.mkdir(parents=True)
    (version / repo.MANIFEST_FILE).write_text("{}")
    (version / "variables").mkdir()
    (tmp_path / "models" / "shapes" / ".staging-3").mkdir()
    (tmp_path / "runs" / "shapes").mkdir(parents=True)
    (tmp_path / "runs" / "shapes" / repo.RUN_FILE).write_text("{}")
    assert repo.misplaced_root(tmp_path / given) == says.format(tmp=tmp_path)
