"""The Open Inference Protocol (KServe v2) gRPC service over the core."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from grpc import aio

from tlserve import repository as repo
from tlserve.service.core import InferenceCore
from tlserve.service.domain import ModelMetadata, ModelRef, State, VersionStatus
from tlserve.service.errors import InvalidArgument
from tlserve.service.oip_bytes import join_bytes
from tlserve.service.parsing import parse_version
from tlserve.service.transport import oip_codec
from tlserve.service.transport.deadline import deadline_of
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
        return pb.ServerReadyResponse(ready=self.core.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.core.ready(ModelRef(request.name, parse_version(request.version)))
        )

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        server = self.core.server_metadata()
        return pb.ServerMetadataResponse(
            name=server.name, version=server.version, extensions=server.extensions
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        metadata = self.core.metadata(ModelRef(request.name, parse_version(request.version)))
        return pb.ModelMetadataResponse(**model_metadata(metadata))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await infer(self.core, request, deadline_of(context))

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for model in self.core.models():
            for version in model.versions:
                if request.ready and not version.ready:
                    continue
                response.models.append(_index(model.name, version))
        return response


def model_metadata(metadata: ModelMetadata) -> dict[str, Any]:
    """The protocol's model metadata (gRPC's message fields, HTTP's JSON object)."""

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

    return {
        "name": metadata.name,
        "versions": [str(v) for v in metadata.serving],
        "platform": PLATFORMS.get(metadata.backend, metadata.backend),
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }


async def infer(
    core: InferenceCore, request: pb.ModelInferRequest, deadline: float | None, raw: bool | None = None
) -> pb.ModelInferResponse:
    """One OIP inference, for gRPC and HTTP alike; output raw when ``raw`` (default: as the input came)."""
    ref = ModelRef(request.model_name, parse_version(request.model_version))
    requested = oip_codec.requested_outputs(request)
    names, top_k = requested.names, requested.top_k
    given = oip_codec.parse_input(request, core.settings.max_message_bytes // 4, core.settings.max_batch_size)
    raw = given.raw if raw is None else raw
    result = await core.infer(ref, given.values, deadline)
    available = [repo.OUTPUT_NAME] + ([repo.EMBEDDING_NAME] if result.embedding is not None else [])
    if not set(names) <= set(available):
        raise InvalidArgument(
            f"outputs {names}: version {result.version} of {result.name!r} has only {available} "
            "(exported before the embedding output existed)"
        )
    response = pb.ModelInferResponse(model_name=result.name, model_version=str(result.version), id=request.id)
    for name in names or available:
        output = response.outputs.add(name=name)
        if name == repo.OUTPUT_NAME and top_k:
            rule = core.unknown_rule(
                result.name,
                requested.unknown.get("unknown_below"),
                requested.unknown.get("unknown_novelty_above"),
            )
            rows = result.top(top_k, rule)
            items = [f"{s.score:f}:{s.index}:{s.label}".encode() for row in rows for s in row]
            output.datatype = "BYTES"
            output.shape.extend([len(rows), len(rows[0])])
            if raw:
                response.raw_output_contents.append(join_bytes(items))
            else:
                output.contents.bytes_contents.extend(items)
            continue
        values = result.probabilities if name == repo.OUTPUT_NAME else result.embedding
        assert values is not None
        output.datatype = "FP32"
        output.shape.extend(values.shape)
        if raw:
            response.raw_output_contents.append(np.ascontiguousarray(values, "<f4").tobytes())
        else:
            output.contents.fp32_contents.extend(values.ravel().tolist())
    return response


def _index(name: str, version: VersionStatus) -> pb.RepositoryIndexResponse.ModelIndex:
    return pb.RepositoryIndexResponse.ModelIndex(
        name=name, version=str(version.version), state=STATES[version.state], reason=version.error
    )
