"""Reference statistics (tlserve/exporters/reference.py, checked by tlserve.repository.check_reference)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

from tlserve import repository as repo
from tlserve.exporters import reference
from tlserve.exporters.export import ExportResult
from tlserve.novelty import Centroids
from tlserve.training import rundir

LABELS = ["a", "b", "c"]


def clusters(seed: int, per_class: int = 200, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Three gaussian clusters in 16-d (positive, like pooled ReLU features), moved by ``shift``."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).uniform(0, 4, (3, 16))
    labels = np.repeat(np.arange(3), per_class)
    return np.abs(centres[labels] + rng.normal(0, 0.5, (len(labels), 16)) + shift), labels


def made(**overrides: Any) -> dict[str, Any]:
    features, labels = clusters(1)
    held_out, _ = clusters(2, per_class=30)
    scores = np.tile([0.9, 0.05, 0.05], (90, 1))
    data = reference.statistics(features, labels, [250, 200, 150], held_out, scores, LABELS)
    data.update(overrides)
    return data


def test_statistics_summarise_the_training_data() -> None:
    data = made()
    assert repo.check_reference(data, LABELS) is data
    assert data["priors"]["counts"] == [250, 200, 150]
    assert data["priors"]["shares"] == pytest.approx([250 / 600, 200 / 600, 150 / 600], abs=1e-6)
    embedding = data["embedding"]
    assert embedding["dimension"] == 16 and embedding["images_per_class"] == [200, 200, 200]
    for centre in embedding["centroids"]:
        assert np.linalg.norm(centre) == pytest.approx(1.0, abs=0.05)  # means of unit vectors, tight clusters
    assert data["confidence"]["validation_counts"][18] == 90  # every top score 0.9: bin [0.9, 0.95)
    # held-out images of the same clusters: novelty around 1 at the 95th percentile, by construction
    p50, _, p95, _ = data["validation_novelty"]["values"]
    assert 0.4 < p50 < 1.0 and 0.7 < p95 < 1.5
    # the same inputs give the same file, byte for byte
    assert json.dumps(made()) == json.dumps(data)


def test_novelty_separates_another_domain() -> None:
    data = made()
    embedding = data["embedding"]
    scored = Centroids(np.array(embedding["centroids"]), np.array(embedding["novelty_scale"]))
    held_out, _ = clusters(3, per_class=50)
    elsewhere = np.abs(np.random.default_rng(4).normal(0, 2, (150, 16)))
    inside, outside = scored.novelty(held_out), scored.novelty(elsewhere)
    assert np.median(outside) > 2 * np.median(inside)
    assert auroc(inside, outside) > 0.95


def test_a_class_without_training_images_has_no_centroid() -> None:
    features, labels = clusters(1)
    keep = labels != 2
    data = reference.statistics(features[keep], labels[keep], [200, 200, 0], None, None, LABELS)
    assert data["embedding"]["centroids"][2] is None and data["embedding"]["distance_quantiles"][2] is None
    assert data["embedding"]["novelty_scale"][2] > 0
    assert "confidence" not in data and "validation_novelty" not in data
    repo.check_reference(data, LABELS)


def broken(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(made())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("schema",), 2, "not a schema 1 reference file"),
        (("labels",), ["a", "b"], "labels differ"),
        (("priors", "counts"), [1, 2], "priors.counts must be a list of 3 numbers"),
        (("priors", "counts"), [1, -2, 3], "must not be negative"),
        (("embedding", "dimension"), 0, "positive integer"),
        (("embedding", "centroids", 1), [0.0] * 15, "embedding.centroids[1] must be a list of 16 numbers"),
        (("embedding", "centroids", 0, 3), float("nan"), "not a finite number"),
        (("embedding", "centroids", 0, 3), True, "not a finite number"),
        (("embedding", "distance_quantiles", 0), [0.3, 0.2, 0.4, 0.5], "must increase"),
        (("embedding", "distance_quantiles", 0), None, "a centroid or a spread, not both"),
        (("embedding", "novelty_scale"), [1.0, 0.0, 1.0], "novelty_scale must be positive"),
        (("embedding", "quantiles"), [0.5, 0.9], "embedding.quantiles must be"),
        (("confidence", "validation_counts"), [1] * 5, "confidence.validation_counts must be a list of 20"),
        (("embedding",), {}, "missing or malformed field 'dimension'"),
    ],
)
def test_check_reference_names_what_is_wrong(path: tuple[Any, ...], value: Any, message: str) -> None:
    with pytest.raises(repo.ManifestError, match=rf"^reference\.json: .*{_escape(message)}"):
        repo.check_reference(broken(path, value), LABELS)


def _escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "[]().*+?" else c for c in text)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """The chance that an image from elsewhere scores higher than one from inside (ties count half)."""
    greater = (outside[:, None] > inside[None, :]).mean()
    ties = (outside[:, None] == inside[None, :]).mean()
    return float(greater + ties / 2)


def domain_images(size: int) -> np.ndarray:
    """Photographs (scikit-image's samples): another domain than the run's coloured noise."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    crops = []
    for photo in photos:
        h, w = photo.shape[:2]
        for top, left in ((0, 0), (h // 2, w // 2), (h // 4, w // 3), (0, w // 2)):
            crop = Image.fromarray(photo[top : top + h // 2, left : left + w // 2]).resize((size, size))
            crops.append(np.asarray(crop.convert("RGB"), np.float32))
    return np.stack(crops)


def test_an_export_ships_reference_statistics(exported: ExportResult, run_dir: Path) -> None:
    manifest, version = exported.manifest, exported.path
    assert manifest.reference["file"] == repo.REFERENCE_FILE
    assert manifest.reference["sha256"] == repo.sha256_file(version / repo.REFERENCE_FILE)
    data = repo.read_reference(version, repo.Manifest.read(version))
    assert data is not None
    run = rundir.read_run(run_dir)
    # priors count the training images: 12 per class, minus those split off for validation
    held_out = [Path(f).parts[0] for f in run.val_files]
    assert data["priors"]["counts"] == [12 - held_out.count(label) for label in manifest.labels]
    assert sum(data["confidence"]["validation_counts"]) == len(run.val_files)
    assert data["embedding"]["dimension"] == 512  # VGG16's pooled features

    # held-out validation images are nearer the training centroids than photographs are
    model = keras.models.load_model(run_dir / rundir.MODEL_FILE)
    embedder = reference.embedding_model(model)
    assert embedder is not None
    from tlserve.exporters.images import validation_images

    validation = validation_images(run, manifest.labels, 32, 1000)
    assert validation is not None
    scored = Centroids(
        np.array([c for c in data["embedding"]["centroids"] if c is not None]),
        np.array(data["embedding"]["novelty_scale"]),
    )
    inside = scored.novelty(embedder.predict(validation.pixels, verbose=0))
    outside = scored.novelty(embedder.predict(domain_images(32), verbose=0))
    assert auroc(inside, outside) > 0.9, (inside, outside)
    assert np.quantile(inside, 0.95) == pytest.approx(data["validation_novelty"]["values"][2], rel=1e-4)

    # the file is protected like the artifacts
    tampered = version.parent / "tampered"
    import shutil

    shutil.copytree(version, tampered)
    (tampered / repo.REFERENCE_FILE).write_text(json.dumps(made()))
    assert repo.verify_checksums(tampered, manifest) == [repo.REFERENCE_FILE]


def test_the_training_sample_shares_the_limit_among_the_classes() -> None:
    from tlserve.exporters.images import _shares

    assert _shares([500, 20, 480], 300) == [140, 20, 140]  # the small class keeps all of its images
    assert _shares([5, 5, 5], 300) == [5, 5, 5]
    assert sum(_shares([1000] * 7, 1000)) == 1000 and min(_shares([1000] * 7, 1000)) >= 142
    assert _shares([0, 10], 4) == [0, 4]
