"""Reference statistics: what a version knows about the data it was trained on (``reference.json``).

The server has never seen the training data; the exporter has. So each version carries, beside its
weights, a small deterministic summary the server can compare production traffic with:

- ``priors``: how many training images each class had (and their shares): the class mix the model
  was taught, against which a served class mix drifts;
- ``confidence``: the histogram of the top-1 (served, so calibrated) score on the validation images:
  what a healthy confidence distribution looks like for this model;
- ``embedding``: the pooled features the head reads (the trainer's feature cache computes the same
  vectors), L2-normalised: per class the centroid of its training images and quantiles of their
  distances to it. A served image's *novelty* is its distance to the nearest centroid divided by
  that class's ``NOVELTY_QUANTILE`` distance: above 1, it is farther from everything the model
  learnt than 95 % of that class's own training images. ``validation_novelty`` gives the same
  score's quantiles on the held-out validation images, what in-distribution images score.

The file is checked by ``tlserve.repository.check_reference`` (no TensorFlow, no numpy) and listed
with its sha256 in the manifest (``Manifest.reference``).
"""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np

from tlserve import repository as repo
from tlserve.exporters import images as imgs
from tlserve.novelty import Centroids, normalised
from tlserve.training.rundir import RunRecord

__all__ = ["build", "describe", "embedding_model", "statistics", "with_embedding"]
FEW = 10
"""Below this many training images a class's scale is a rough estimate (said in the record)."""

HEAD_INPUT_LAYER = "dropout"
"""The first head layer of the trainer's classifier (tlserve.training.network.build_classifier):
its input is the pooled feature vector."""


def embedding_model(model: keras.Model) -> keras.Model | None:
    """``model`` up to the pooled features its head reads; None when it has no trainer's head."""
    try:
        layer = model.get_layer(HEAD_INPUT_LAYER)
    except ValueError:
        return None
    features = layer.input
    if len(features.shape) != 2:
        return None
    return keras.Model(model.inputs, features, name="embedding")


def with_embedding(model: keras.Model) -> keras.Model:
    """``model`` with two named outputs, ``probabilities`` and ``embedding`` (the pooled features its
    head reads); ``model`` itself when it has no trainer's head."""
    embedder = embedding_model(model)
    if embedder is None:
        return model
    outputs = {repo.OUTPUT_NAME: model.output, repo.EMBEDDING_NAME: embedder.output}
    return keras.Model(model.inputs, outputs, name=model.name)


def _round(values: np.ndarray) -> list[Any]:
    """float32 precision, as plain JSON numbers (the same file from the same inputs)."""
    return np.asarray(values, np.float32).astype(np.float64).round(7).tolist()


def statistics(
    features: np.ndarray,
    labels: np.ndarray,
    class_counts: list[int],
    validation_features: np.ndarray | None,
    validation_scores: np.ndarray | None,
    names: list[str],
) -> dict[str, Any]:
    """``reference.json``'s content.

    ``features``/``labels``: embeddings of (a sample of) the training images and their classes;
    ``class_counts``: every training image counted per class (the priors); ``validation_features``
    and ``validation_scores``: embeddings and served probabilities of the validation images (None when
    the validation images are gone)."""
    embedded = normalised(features)
    dimension = embedded.shape[1]
    centroids = np.zeros((len(names), dimension))
    per_class: list[list[float] | None] = []
    for index in range(len(names)):
        members = embedded[labels == index]
        if len(members) == 0:
            per_class.append(None)
            continue
        centre = members.mean(axis=0)
        centroids[index] = centre
        # NOTE: leave-one-out: an image's distance to the centroid of the *other* images of its class
        # is n/(n-1) times its distance to the full centroid, which it pulled towards itself; what a
        # new image of the class meets is the former
        n = len(members)
        distances = np.linalg.norm(members - centre, axis=1) * (n / (n - 1) if n > 1 else 0.0)
        per_class.append(_round(np.quantile(distances, repo.REFERENCE_QUANTILES)))
    present = [i for i, q in enumerate(per_class) if q is not None]
    where = repo.REFERENCE_QUANTILES.index(repo.NOVELTY_QUANTILE)
    # NOTE: a class of one training image has a zero spread; the median spread of the others (or a
    # small floor) keeps its novelty finite
    spreads = np.array([per_class[i][where] for i in present])  # type: ignore[index]
    floor = max(float(np.median(spreads)) if len(spreads) else 0.0, 1e-6)
    scale = np.array([max(q[where], floor) if q is not None else floor for q in per_class])
    total = max(sum(class_counts), 1)
    result: dict[str, Any] = {
        "schema": repo.REFERENCE_SCHEMA,
        "labels": list(names),
        "priors": {"counts": list(class_counts), "shares": _round(np.array(class_counts) / total)},
        "embedding": {
            "dimension": int(dimension),
            "normalisation": "l2",
            "images": len(labels),
            "images_per_class": [int((labels == i).sum()) for i in range(len(names))],
            "centroids": [_round(c) if per_class[i] is not None else None for i, c in enumerate(centroids)],
            "quantiles": list(repo.REFERENCE_QUANTILES),
            "distance_quantiles": per_class,
            "novelty_quantile": repo.NOVELTY_QUANTILE,
            "novelty_scale": _round(scale),
        },
    }
    if validation_scores is not None and len(validation_scores):
        counts, _ = np.histogram(validation_scores.max(axis=1), bins=repo.CONFIDENCE_BINS, range=(0.0, 1.0))
        result["confidence"] = {
            "bins": repo.CONFIDENCE_BINS,
            "validation_images": len(validation_scores),
            "validation_counts": [int(c) for c in counts],
        }
    if validation_features is not None and len(validation_features) and present:
        kept = np.array(present)
        scores = Centroids(centroids[kept], scale[kept]).novelty(validation_features)
        result["validation_novelty"] = {
            "images": len(scores),
            "quantiles": list(repo.REFERENCE_QUANTILES),
            "values": _round(np.quantile(scores, repo.REFERENCE_QUANTILES)),
        }
    return result


def build(
    model: keras.Model,
    run: RunRecord,
    labels: list[str],
    validation: imgs.LabelledImages | None,
    limit: int,
    batch: int,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``reference.json``'s content (None when it cannot be made) and the manifest's ``reference``
    record (its figures, or a note saying why there is none). ``model`` is the served model: the
    confidence histogram is of the scores the server gives."""
    embedder = embedding_model(model)
    if embedder is None:
        return None, {
            "note": f"the model has no trainer's head (a {HEAD_INPUT_LAYER!r} layer on pooled features)"
        }
    sample = imgs.training_sample(run, labels, limit)
    if sample is None:
        return None, {"note": "the run's training images are gone (the data dir has moved)"}
    split, counts = sample
    size = int(model.inputs[0].shape[1])
    features = np.concatenate(
        [np.asarray(embedder.predict_on_batch(x), np.float32) for x in imgs.batches(split, size, batch)]
    )
    validation_features = validation_scores = None
    if validation is not None and len(validation.pixels):
        both = keras.Model(model.inputs, [embedder.output, model.output])
        validation_features, validation_scores = both.predict(validation.pixels, verbose=0, batch_size=batch)
    data = statistics(
        features, np.asarray(split.labels), counts, validation_features, validation_scores, labels
    )
    record: dict[str, Any] = {
        "file": repo.REFERENCE_FILE,
        "training_images": len(split),
        "validation_images": 0 if validation_scores is None else len(validation_scores),
        "dimension": data["embedding"]["dimension"],
    }
    if "validation_novelty" in data:
        record["validation_novelty_p95"] = data["validation_novelty"]["values"][
            repo.REFERENCE_QUANTILES.index(0.95)
        ]
    few = [labels[i] for i, n in enumerate(data["embedding"]["images_per_class"]) if n < FEW]
    if few:
        record["note"] = (
            f"{len(few)} class(es) with fewer than {FEW} training images ({', '.join(few[:5])}"
            f"{', ...' if len(few) > 5 else ''}): their novelty scale is a rough estimate"
        )
    return data, record


def write(data: dict[str, Any], version_dir: Any) -> str:
    """Write ``reference.json`` into ``version_dir``; its sha256."""
    path = version_dir / repo.REFERENCE_FILE
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    return repo.sha256_file(path)


def describe(record: dict[str, Any]) -> str:
    """One line for the export's progress output."""
    if not record.get("file"):
        return f"none: {record.get('note', '')}"
    novelty_line = ""
    if "validation_novelty_p95" in record:
        novelty_line = f"; validation novelty p95 {record['validation_novelty_p95']:.2f}"
    return (
        f"class priors, confidence histogram, {record['dimension']}-d centroids from "
        f"{record['training_images']} training images{novelty_line}"
    )
