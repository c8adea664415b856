"""The baseline: the same load through onnxruntime in this process, on the served version's fp32 ONNX.

One session called from one thread: requests wait their turn, as in a server that does not batch.
Encoded images are decoded first by the server's own decoder, so jpeg input costs the same work on
both sides, and the ratios say what serving adds: transport, queueing, batching.

``batch_sweep`` is the benchmarks' in-process figure: a plain session called directly, batch-1
latency and the best throughput over batch sizes.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlserve import repository as repo
from tlserve.errors import TlserveError, UsageError
from tlserve.service.bench.calls import Payload
from tlserve.service.bench.load import Call, p50_ms
from tlserve.service.bench.stats import OK, Outcome

SWEEP_BATCHES = (1, 2, 4, 8, 16, 32)


def read_manifest(repository: Path, name: str, version: int) -> tuple[Path, repo.Manifest]:
    """The version dir and manifest of ``name`` ``version`` in ``repository``; UsageError if absent."""
    if not repository.is_dir():
        raise UsageError(f"--repository {repository} is not a directory")
    have = repo.versions(repository / name)
    if not have:
        models = sorted(p.name for p in repository.iterdir() if repo.versions(p))
        raise UsageError(f"no model {name!r} in {repository} (it has: {', '.join(models) or 'none'})")
    if version not in have:
        raise UsageError(f"the server serves {name} version {version}, which {repository / name} does not "
                         f"have (it has {', '.join(map(str, have))}): point --repository at the "
                         "repository the server serves")  # fmt: skip
    version_dir = repository / name / str(version)
    try:
        return version_dir, repo.Manifest.read(version_dir)
    except repo.ManifestError as exc:
        raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class Baseline:
    session: Any
    """The onnxruntime InferenceSession."""
    artifact: str
    providers: list[str]
    """What onnxruntime really gave, best first."""


def open_session(version_dir: Path, manifest: repo.Manifest) -> Baseline:
    """An onnxruntime session on the fp32 ONNX file, with the providers the server would pick first."""
    import onnxruntime as ort

    from tlserve.service.backends.onnx import choose_providers, provider_options

    artifact = manifest.artifact("onnx", "fp32")
    if artifact is None:
        raise UsageError(f"{version_dir} has no fp32 ONNX artifact (export it with tlserve export)")
    file = next(iter(artifact.files))
    wanted = choose_providers(artifact.recommended_providers, ort.get_available_providers())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(version_dir / file), sess_options=options, providers=provider_options(wanted, None, fp16=False)
    )
    return Baseline(session, file, list(session.get_providers()))


def _predictor(baseline: Baseline, payload: Payload, height: int, width: int) -> Any:
    """A function running one request's work: decoding (jpeg input), then the model; -> rows."""
    from tlserve.service.images import decode_batch
    from tlserve.service.settings import ServerSettings

    fields = ServerSettings.model_fields
    formats = fields["allowed_image_formats"].get_default(call_default_factory=True)
    max_pixels = fields["max_image_pixels"].get_default()

    def predict() -> int:
        pixels = payload.pixels
        if pixels is None:
            assert payload.images is not None
            pixels = decode_batch(payload.images, height, width, formats, max_pixels)
        elif pixels.dtype != np.float32:  # NOTE: uint8 as the server converts it, once per call
            pixels = pixels.astype(np.float32)
        (probabilities,) = baseline.session.run([repo.OUTPUT_NAME], {repo.INPUT_NAME: pixels})
        return len(probabilities)

    return predict


def inprocess_call(baseline: Baseline, payload: Payload, height: int, width: int, executor: Executor) -> Call:
    """A call running one request in ``executor``; checked once first (TlserveError if it fails)."""
    predict = _predictor(baseline, payload, height, width)
    batch = len(payload.pixels) if payload.pixels is not None else len(payload.images or [])
    try:
        rows = predict()
    except Exception as exc:
        raise TlserveError(f"in-process onnxruntime failed: {type(exc).__name__}: {exc}") from None
    if rows != batch:
        raise TlserveError(f"in-process onnxruntime answered {rows} rows for a batch of {batch}")

    ok = Outcome(OK)

    async def call() -> Outcome:
        try:
            await asyncio.get_running_loop().run_in_executor(executor, predict)
        except Exception as exc:  # NOTE: counted by type like a status code; the first call passed
            return Outcome(type(exc).__name__)
        return ok

    return call


def batch_sweep(model: Path, height: int, width: int, repeats: int) -> dict[str, Any]:
    """onnxruntime (CPU, default threads) on ``model`` in this process, random pixels: images/s by
    batch size (``repeats`` images' worth of calls, 8 at least, each timed by ``p50_ms``), then the
    batch-1 p50 over ``repeats`` calls. {"p50" ms, "best_ips", "best_batch", "by_batch"}."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    by_batch = {}
    for batch in SWEEP_BATCHES:
        pixels = rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)
        ms = p50_ms(lambda: session.run(None, {repo.INPUT_NAME: pixels}), max(8, repeats // batch))  # noqa: B023
        by_batch[batch] = batch * 1000 / ms
    one = rng.uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    p50 = p50_ms(lambda: session.run(None, {repo.INPUT_NAME: one}), repeats)
    best = max(by_batch, key=lambda b: by_batch[b])
    return {"p50": p50, "best_ips": by_batch[best], "best_batch": best, "by_batch": by_batch}
