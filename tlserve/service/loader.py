"""Loading one version: its manifest and checksums, the backend, and a warm-up at the sizes served."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlserve import repository as repo
from tlserve.service.backends import Backend, create_backend
from tlserve.service.settings import ModelSettings, ServerSettings


def load_version(path: Path, settings: ServerSettings, model: ModelSettings) -> tuple[repo.Manifest, Backend]:
    """The manifest and the loaded, warmed-up backend of the version in ``path`` (blocking: run it
    in a worker thread); any exception means the version cannot be served."""
    manifest = repo.Manifest.read(path)
    bad = repo.verify_checksums(path, manifest)
    if bad:
        raise ValueError(f"files missing or not matching their sha256 in the manifest: {', '.join(bad)}")
    backend = create_backend(path, manifest, settings, model)
    backend.load()
    height, width = manifest.image_size
    rng = np.random.default_rng(0)
    sizes = {1, min(settings.dynamic_batch_size, settings.max_batch_size)}
    if set(backend.providers[:1]) & {repo.TENSORRT, repo.CUDA}:  # NOTE: TensorRT builds its engine
        sizes.add(settings.max_batch_size)  # profile from the shapes it has run: cover them all
    for size in sorted(sizes):  # warm-up: first runs allocate and tune
        pixels = rng.uniform(0, 255, (size, height, width, 3)).astype(np.float32)
        outputs = backend.outputs(pixels)  # NOTE: what requests run (both outputs)
        out = outputs.probabilities
        if out.shape != (size, len(manifest.labels)) or not np.isfinite(out).all():
            raise ValueError(f"warm-up gave shape {out.shape} (expected {(size, len(manifest.labels))})")
        if manifest.embedding_size is not None:
            embedding = outputs.embedding
            wanted = (size, manifest.embedding_size)
            if embedding is None or embedding.shape != wanted or not np.isfinite(embedding).all():
                got = None if embedding is None else embedding.shape
                raise ValueError(f"warm-up gave an embedding of shape {got} (expected {wanted})")
    return manifest, backend
