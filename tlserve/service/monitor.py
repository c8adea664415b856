"""What the served predictions say about the traffic, against what the version learnt of its data.

Each version's ``reference.json`` (``tlserve.exporters.reference``) holds the class priors of its
training images and, per class, the centroid of their L2-normalised embeddings and the distance
that 95 % of them lie within. From the two outputs of every request the server then records (the
metrics in ``tlserve.service.metrics``):

- the top-1 class and its calibrated score (``tlserve_predictions_total``, ``..._confidence``);
- the *novelty* of each image: its embedding's distance to the nearest centroid, in units of that
  class's 95th-percentile training distance (above 1: farther out than 95 % of the class's own
  training images; ``tlserve_prediction_novelty``);
- the *class drift*: the Jensen-Shannon divergence (base 2: 0 for the same distribution, 1 for
  disjoint ones) between the top-1 classes of the last ``window(K)`` images and the training priors
  (``tlserve_class_drift``, NaN until ``minimum(K)`` images were served). NOTE: a sample of N images
  of the priors themselves scores about (K - 1) / (8 N ln 2) by chance alone (0.18 for 1000 classes
  and 1000 images), so both grow with the class count K: the chance level stays below ~0.02.

All of it runs on the event loop after the batch answered: a few numpy operations on [N, D] and a
counter per image, no lock (one thread), nothing that can fail a request; the drift itself is
computed when Prometheus scrapes it, from a copy of the window's counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlserve import repository as repo
from tlserve.novelty import Centroids

log = logging.getLogger("tlserve.monitor")

WINDOW = 1000
"""Images in the sliding window the class drift is computed over: at least this, 50 per class."""
MINIMUM = 100
"""Images served before the drift gauge says anything (NaN until then): at least this, 10 per class."""


def window(classes: int) -> int:
    return max(WINDOW, 50 * classes)


def minimum(classes: int) -> int:
    return max(MINIMUM, 10 * classes)


@dataclass(frozen=True)
class Reference:
    """``reference.json`` as arrays."""

    priors: np.ndarray
    """[classes], summing to 1."""
    centroids: np.ndarray
    """[K, D], the classes that had training images."""
    scale: np.ndarray
    """[K], each centroid's class distance that novelty is measured in."""
    centroids_of: Centroids

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Reference:
        counts = np.asarray(data["priors"]["counts"], np.float64)
        embedding = data["embedding"]
        present = [i for i, c in enumerate(embedding["centroids"]) if c is not None]
        centroids = np.asarray([embedding["centroids"][i] for i in present], np.float64)
        scale = np.asarray([embedding["novelty_scale"][i] for i in present], np.float64)
        return cls(counts / max(counts.sum(), 1.0), centroids, scale, Centroids(centroids, scale))

    @property
    def dimension(self) -> int:
        return self.centroids_of.dimension

    def novelty(self, embedding: np.ndarray) -> np.ndarray:
        """[N] novelty of [N, D] embeddings (``tlserve.novelty``, as the exporter computed it)."""
        return self.centroids_of.novelty(embedding)


def load_reference(version_dir: Path, manifest: repo.Manifest) -> Reference | None:
    """The version's reference statistics, or None (exported without them, or unreadable: then a
    warning, and the version serves without novelty and drift)."""
    try:
        data = repo.read_reference(version_dir, manifest)
    except repo.ManifestError as exc:
        log.warning("%s: serving without novelty and drift metrics: %s", manifest.exported_as, exc)
        return None
    if data is None:
        return None
    reference = Reference.from_data(data)
    if reference.dimension != manifest.embedding_size:
        log.warning(
            "%s: serving without novelty and drift metrics: reference.json's centroids are %d-d, the "
            "embedding output %s", manifest.exported_as, reference.dimension, manifest.embedding_size,
        )  # fmt: skip
        return None
    return reference


def novelty_or_none(reference: Reference, embedding: np.ndarray) -> np.ndarray | None:
    """``reference.novelty(embedding)``, or None (logged) should it fail: never a failed request."""
    try:
        return reference.novelty(embedding)
    except Exception:  # NOTE: load_reference checked the dimension; this is the last guard
        log.exception("computing novelty failed; answering without it")
        return None


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two distributions, base 2 (in [0, 1])."""
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / m[mask])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


class ClassWindow:
    """The top-1 classes of the last ``size`` images, counted."""

    def __init__(self, classes: int, size: int) -> None:
        self._ring = np.zeros(size, np.int64)
        self._counts = np.zeros(classes, np.int64)
        self._next = 0
        self.seen = 0

    def add(self, classes: np.ndarray) -> None:
        size = len(self._ring)
        for index in classes[-size:]:
            if self.seen >= size:
                self._counts[self._ring[self._next]] -= 1
            self._ring[self._next] = index
            self._counts[index] += 1
            self._next = (self._next + 1) % size
            self.seen += 1

    def distribution(self) -> np.ndarray:
        counts = self._counts.copy()  # NOTE: read on the scraping thread while the loop adds
        return counts / max(int(counts.sum()), 1)
