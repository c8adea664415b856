"""The native API (protos/tlserve/v1/inference.proto) over the core."""

from __future__ import annotations

from typing import Any, TypeAlias

from grpc import aio

from tlserve.service.core import DEFAULT_TOP_K, InferenceCore
from tlserve.service.domain import ModelRef, State, VersionStatus
from tlserve.service.errors import InvalidArgument
from tlserve.service.transport.deadline import deadline_of
from tlserve.service.wire.tlserve.v1 import inference_pb2 as pb
from tlserve.service.wire.tlserve.v1 import inference_pb2_grpc

Context: TypeAlias = aio.ServicerContext[Any, Any]
STATE = {
    State.LOADING: pb.ModelVersion.LOADING,
    State.AVAILABLE: pb.ModelVersion.AVAILABLE,
    State.UNLOADING: pb.ModelVersion.UNLOADING,
    State.UNLOADED: pb.ModelVersion.UNLOADED,
    State.FAILED: pb.ModelVersion.FAILED,
}


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def Classify(self, request: pb.ClassifyRequest, context: Context) -> pb.ClassifyResponse:
        if request.version < 0:
            raise InvalidArgument(f"version must be 0 (newest) or positive; got {request.version}")
        if request.top_k < 0:
            raise InvalidArgument(
                f"top_k must be 0 (default {DEFAULT_TOP_K}) or positive; got {request.top_k}"
            )
        ref = ModelRef(request.model, version=request.version or None)
        k = request.top_k or DEFAULT_TOP_K
        result = await self.core.classify(ref, request.images, k, deadline_of(context))
        if request.embedding and result.embedding is None:
            raise InvalidArgument(
                f"version {result.version} of {result.name!r} has no embedding output "
                "(exported before it existed)"
            )
        response = pb.ClassifyResponse(model=result.name, version=result.version)
        for index, top in enumerate(result.top):
            prediction = response.predictions.add()
            prediction.labels.extend(pb.Label(label=s.label, index=s.index, score=s.score) for s in top)
            if request.embedding and result.embedding is not None:
                prediction.embedding.extend(result.embedding[index].tolist())
        return response

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse()
        for model in self.core.models():
            response.models.add(name=model.name).versions.extend(map(version_info, model.versions))
        return response


def version_info(version: VersionStatus) -> pb.ModelVersion:
    height, width = version.image_size
    return pb.ModelVersion(
        version=version.version, state=STATE[version.state], error=version.error, labels=version.labels,
        height=height, width=width, base=version.base, backend=version.backend,
        providers=version.providers, artifact=version.artifact, exported_as=version.exported_as,
    )  # fmt: skip
