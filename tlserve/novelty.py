"""Novelty of an embedding: the one formula the exporter (reference statistics) and the server
(metrics, "unknown") both use. numpy only: the server imports it without TensorFlow.

An image's novelty is its L2-normalised embedding's distance to the nearest class centroid, divided
by that class's scale (the ``repository.NOVELTY_QUANTILE`` quantile of its own training images'
leave-one-out distances, ``reference.json``'s ``novelty_scale``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Centroids", "normalised"]


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float64 (a zero row stays zero)."""
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


class Centroids:
    """[K, D] class centroids with their scales [K], ready to score batches."""

    def __init__(self, centroids: np.ndarray, scale: np.ndarray) -> None:
        self.centroids = np.asarray(centroids, np.float64)
        self.scale = np.asarray(scale, np.float64)
        self._squared = (self.centroids**2).sum(axis=1)
        self.dimension = int(self.centroids.shape[1])

    def novelty(self, embeddings: np.ndarray) -> np.ndarray:
        """[N] novelty of [N, D] raw embeddings (normalised here); one [N, K] product, no [N, K, D]."""
        unit = normalised(embeddings)
        # |u - c|^2 = |u|^2 + |c|^2 - 2 u.c
        squared = (unit**2).sum(axis=1)[:, None] + self._squared[None, :] - 2.0 * unit @ self.centroids.T
        distances = np.sqrt(np.maximum(squared, 0.0))
        nearest = distances.argmin(axis=1)
        return np.asarray(distances[np.arange(len(unit)), nearest] / self.scale[nearest])
