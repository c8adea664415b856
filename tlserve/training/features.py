"""The feature cache: run the frozen base once, then train the head on its outputs.

Features *and* labels are collected in the same pass over an unshuffled pipeline, so they cannot
drift apart. Sets that fit under the memory limit stay in RAM; larger ones spill to a ``.npy``
memory map in the run's work directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np


@dataclass
class FeatureCache:
    features: np.ndarray
    labels: np.ndarray
    on_disk: bool

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)


def extract(
    extractor: keras.Model,
    batches: Any,
    count: int,
    *,
    memory_limit_bytes: int,
    spill_dir: Path,
    name: str,
    progress: bool,
) -> FeatureCache:
    """Run ``extractor`` over a batched (images, labels) dataset of ``count`` examples."""
    dim = int(extractor.outputs[0].shape[-1])
    on_disk = count * dim * 4 > memory_limit_bytes
    features: np.ndarray
    if on_disk:
        features = np.lib.format.open_memmap(
            spill_dir / f"features-{name}.npy", mode="w+", dtype=np.float32, shape=(count, dim)
        )
    else:
        features = np.empty((count, dim), dtype=np.float32)
    labels = np.empty((count,), dtype=np.int32)
    bar = keras.utils.Progbar(count, unit_name="image") if progress else None
    done = 0
    for images, batch_labels in batches:
        out = np.asarray(extractor.predict_on_batch(images), dtype=np.float32)
        n = out.shape[0]
        features[done : done + n] = out
        labels[done : done + n] = np.asarray(batch_labels)
        done += n
        if bar is not None:
            bar.update(done)
    if done != count:
        raise RuntimeError(f"feature extraction saw {done} images, expected {count}")
    return FeatureCache(features, labels, on_disk)


def batches(cache: FeatureCache, batch_size: int, *, shuffle: bool, seed: int, repeats: int = 1) -> Any:
    """Training batches of cached features: a tf.data pipeline in RAM, a reader for a memory map.
    ``repeats`` passes over the cache (each shuffled anew) make one epoch."""
    if cache.on_disk:
        return FeatureBatches(cache, batch_size, shuffle=shuffle, seed=seed, repeats=repeats)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((cache.features, cache.labels))
    if shuffle:
        ds = ds.shuffle(len(cache.labels), seed=seed, reshuffle_each_iteration=True)
    if repeats > 1:
        ds = ds.repeat(repeats)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class FeatureBatches(keras.utils.PyDataset):
    """Batches of cached features read from a memory map; reshuffled every epoch when ``shuffle``."""

    def __init__(
        self, cache: FeatureCache, batch_size: int, *, shuffle: bool, seed: int, repeats: int = 1
    ) -> None:
        super().__init__()
        self.cache = cache
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.repeats = repeats
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(cache.labels))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # NOTE: sorted indices read a memory map sequentially; order inside a batch does not matter.
        idx = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return self.cache.features[idx], self.cache.labels[idx]

    def on_epoch_end(self) -> None:
        n = len(self.cache.labels)
        passes = [self.rng.permutation(n) if self.shuffle else np.arange(n) for _ in range(self.repeats)]
        self.order = np.concatenate(passes)
