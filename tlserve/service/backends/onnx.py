"""onnxruntime backend: picks the artifact and execution providers, reports what it really got."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tlserve import repository as repo
from tlserve.repository import Artifact
from tlserve.service.backends.base import Backend, Outputs

log = logging.getLogger(__name__)
GPU_PROVIDERS = (repo.TENSORRT, repo.CUDA)


def choose_providers(wanted: list[str], available: list[str]) -> list[str]:
    """``wanted`` in its order, keeping only installed providers; CPU always last as the fallback."""
    chosen = [p for p in wanted if p in available and p != repo.CPU]
    return [*chosen, repo.CPU]


def provider_options(providers: list[str], cache_dir: Path | None, fp16: bool) -> list[Any]:
    """onnxruntime's providers argument: TensorRT with its engine/timing cache and fp16 settings."""
    result: list[Any] = []
    for provider in providers:
        if provider == repo.TENSORRT:
            options: dict[str, Any] = {"trt_fp16_enable": fp16}
            if cache_dir is not None:
                where = str(cache_dir)
                options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": where,
                            "trt_timing_cache_enable": True, "trt_timing_cache_path": where}  # fmt: skip
            result.append((provider, options))
        else:
            result.append(provider)
    return result


def choose_artifact(manifest: repo.Manifest, precision: str, providers: list[str]) -> Artifact:
    """The ONNX artifact for ``precision``; ``auto`` takes fp16 on a GPU provider and int8 on CPU when
    the manifest recommends them, else fp32. ValueError when the wanted one is not in the manifest."""
    if precision != "auto":
        artifact = manifest.artifact("onnx", precision)
        if artifact is None:
            have = sorted(a.precision for a in manifest.artifacts if a.kind == "onnx")
            raise ValueError(
                f"no {precision} ONNX artifact in this version (has: {', '.join(have) or 'none'})"
            )
        return artifact
    on_gpu = providers[0] in GPU_PROVIDERS
    for candidate in ["fp16"] if on_gpu else ["int8"]:
        artifact = manifest.artifact("onnx", candidate)
        if artifact is not None and artifact.recommended and providers[0] in artifact.recommended_providers:
            return artifact
    fp32 = manifest.artifact("onnx", "fp32")
    if fp32 is None:
        raise ValueError("no ONNX artifact in this version (export it with tlserve export --format onnx)")
    return fp32


_BOTH = [repo.OUTPUT_NAME, repo.EMBEDDING_NAME]


class OnnxBackend(Backend):
    name = "onnxruntime"

    def load(self) -> None:
        wanted = choose_providers(self.settings.providers, ort.get_available_providers())
        artifact = choose_artifact(self.manifest, self.model.precision or "auto", wanted)
        self.artifact = next(iter(artifact.files))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.settings.intra_op_threads
        options.inter_op_num_threads = self.settings.inter_op_threads
        options.log_severity_level = 3
        cache = self.settings.tensorrt_cache_dir
        if cache is not None and repo.TENSORRT in wanted:
            cache.mkdir(parents=True, exist_ok=True)
        providers = provider_options(wanted, cache, fp16=artifact.precision == "fp16")
        self._session = ort.InferenceSession(
            str(self.version_dir / self.artifact), sess_options=options, providers=providers
        )
        self.providers = list(self._session.get_providers())
        if self.providers[0] != wanted[0]:
            log.warning("%s: asked for %s, onnxruntime gave %s", self.version_dir, wanted, self.providers)
        inputs = [i.name for i in self._session.get_inputs()]
        if inputs != [repo.INPUT_NAME]:
            raise ValueError(f"{self.artifact}: expected one input {repo.INPUT_NAME!r}, found {inputs}")
        outputs = [o.name for o in self._session.get_outputs()]
        wanted_outputs = [t.name for t in self.manifest.outputs]
        wanted_outputs += [repo.EMBEDDING_NAME] if self.manifest.embedding_size else []
        if not set(wanted_outputs) <= set(outputs):
            raise ValueError(
                f"{self.artifact}: the manifest lists outputs {wanted_outputs}; it has {outputs}"
            )

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        (probabilities,) = self._session.run([repo.OUTPUT_NAME], {repo.INPUT_NAME: pixels})
        return np.asarray(probabilities, dtype=np.float32)

    def outputs(self, pixels: np.ndarray) -> Outputs:
        if self.manifest.embedding_size is None:
            return Outputs(self.predict(pixels))
        probabilities, embedding = self._session.run(_BOTH, {repo.INPUT_NAME: pixels})
        return Outputs(np.asarray(probabilities, dtype=np.float32), np.asarray(embedding, dtype=np.float32))

    def unload(self) -> None:
        self._session = None
