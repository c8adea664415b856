"""The native API (protos/tlserve/v1/inference.proto) over the core."""

from __future__ import annotations

from typing import Any, TypeAlias

from grpc import aio

from tlserve.service.core import InferenceCore, ModelRef
from tlserve.service.errors import InvalidArgument
from tlserve.service.transport.deadline import deadline_of
from tlserve.service.watcher import ServedVersion, State
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
        ref = ModelRef(request.model, version=request.version or None)
        result = await self.core.classify(ref, request.images, request.top_k, deadline_of(context))
        response = pb.ClassifyResponse(model=result.name, version=result.version)
        for top in result.top:
            response.predictions.add().labels.extend(
                pb.Label(label=s.label, index=s.index, score=s.score) for s in top
            )
        return response

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse()
        for model in self.core.models():
            entry = response.models.add(name=model.name)
            for served in sorted(model.versions.values(), key=lambda v: v.version):
                entry.versions.append(version_info(served))
        return response


def version_info(served: ServedVersion) -> pb.ModelVersion:
    info = pb.ModelVersion(version=served.version, state=STATE[served.state], error=served.error)
    if served.manifest is not None:
        info.labels.extend(served.manifest.labels)
        info.height, info.width = served.manifest.image_size
        info.base = str(served.manifest.base.get("name") or "a network trained before")
    if served.backend is not None:
        info.backend = served.backend.name
        info.providers.extend(served.backend.providers)
        info.artifact = served.backend.artifact
    return info
