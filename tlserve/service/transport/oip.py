"""The Open Inference Protocol (KServe v2) gRPC service over the core."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from grpc import aio

import tlserve
from tlserve import repository as repo
from tlserve.service.core import InferenceCore, ModelRef, top_labels
from tlserve.service.errors import NotFound
from tlserve.service.parsing import parse_version
from tlserve.service.transport import oip_codec
from tlserve.service.transport.deadline import deadline_of
from tlserve.service.watcher import ServedVersion, State
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as pb
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2_grpc

Context: TypeAlias = aio.ServicerContext[Any, Any]
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorflow": "tensorflow_savedmodel"}
STATES = {State.AVAILABLE: "READY", State.LOADING: "LOADING", State.UNLOADING: "UNLOADING",
          State.UNLOADED: "UNAVAILABLE", State.FAILED: "UNAVAILABLE"}  # fmt: skip


class InferenceService(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.max_elements = core.settings.max_message_bytes // 4

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.repository.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        version = parse_version(request.version)
        model = self.core.repository.models.get(request.name)
        ready = model is not None and (bool(model.serving) if version is None else version in model.serving)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="tlserve", version=tlserve.__version__, extensions=["classification"]
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        served = self.core.resolve(ModelRef(request.name, parse_version(request.version)))
        assert served.manifest is not None and served.backend is not None
        height, width = served.manifest.image_size
        serving = self.core.model(request.name).serving
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(v) for v in sorted(serving)],
            platform=PLATFORMS.get(served.backend.name, served.backend.name),
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=repo.INPUT_NAME, datatype="FP32",
                                                            shape=[-1, height, width, 3])],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=repo.OUTPUT_NAME, datatype="FP32",
                                                             shape=[-1, len(served.manifest.labels)])],
        )  # fmt: skip

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await infer(self.core, request, deadline_of(context))

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for model in self.core.models():
            for served in sorted(model.versions.values(), key=lambda v: v.version):
                if request.ready and not served.ready:
                    continue
                response.models.append(_index(served))
        return response


async def infer(
    core: InferenceCore, request: pb.ModelInferRequest, deadline: float | None, raw: bool | None = None
) -> pb.ModelInferResponse:
    """One OIP inference, for gRPC and HTTP alike; output raw when ``raw`` (default: as the input came)."""
    ref = ModelRef(request.model_name, parse_version(request.model_version))
    top_k = oip_codec.requested_classification(request)
    given = oip_codec.parse_input(request, core.settings.max_message_bytes // 4, core.settings.max_batch_size)
    raw = given.raw if raw is None else raw
    if given.pixels is not None:
        result = await core.predict(ref, given.pixels, deadline)
    else:
        assert given.images is not None
        result = await core.predict_images(ref, given.images, deadline)
    response = pb.ModelInferResponse(model_name=result.name, model_version=str(result.version), id=request.id)
    output = response.outputs.add(name=repo.OUTPUT_NAME)
    probabilities = result.probabilities
    if top_k:
        rows = top_labels(probabilities, _labels(core, result.name, result.version), top_k)
        items = [f"{s.score:f}:{s.index}:{s.label}".encode() for row in rows for s in row]
        output.datatype = "BYTES"
        output.shape.extend([len(rows), len(rows[0])])
        if raw:
            response.raw_output_contents.append(oip_codec.join_bytes(items))
        else:
            output.contents.bytes_contents.extend(items)
        return response
    output.datatype = "FP32"
    output.shape.extend(probabilities.shape)
    if raw:
        response.raw_output_contents.append(np.ascontiguousarray(probabilities, "<f4").tobytes())
    else:
        output.contents.fp32_contents.extend(probabilities.ravel().tolist())
    return response


def _labels(core: InferenceCore, name: str, version: int) -> list[str]:
    served = core.model(name).versions.get(version)
    if served is None or served.manifest is None:
        raise NotFound(f"model {name!r} version {version} is gone")
    return served.manifest.labels


def _index(served: ServedVersion) -> pb.RepositoryIndexResponse.ModelIndex:
    return pb.RepositoryIndexResponse.ModelIndex(
        name=served.name, version=str(served.version), state=STATES[served.state], reason=served.error
    )
