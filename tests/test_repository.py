"""The model-repository contract, as the server will use it: no TensorFlow, strict names, versions."""

from __future__ import annotations

import json
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
        ({"input": {"name": "image", "shape": 5, "dtype": "float32"}}, "invalid manifest"),
        ({"artifacts": []}, "no artifacts"),
    ]:
        with pytest.raises(repo.ManifestError, match=message):
            repo.Manifest.from_dict(minimal_manifest() | bad_value)
    with pytest.raises(repo.ManifestError, match="JSON object"):
        repo.Manifest.from_dict([1, 2])
    (tmp_path / "7").mkdir()
    manifest.write(tmp_path / "7")
    with pytest.raises(repo.ManifestError, match="says version 1"):
        repo.Manifest.read(tmp_path / "7")
    (tmp_path / "manifest.json").write_text("{ truncated")
    with pytest.raises(repo.ManifestError, match="cannot read"):
        repo.Manifest.read(tmp_path)
    assert json.loads(json.dumps(manifest.to_dict()))["name"] == "m"
