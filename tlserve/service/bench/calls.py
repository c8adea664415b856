"""The request of each API and input kind, built and serialized once; the call that sends it.

native  tlserve.v1.Inference/Classify                jpeg: ``images``, top_k 1
tfs     tensorflow.serving.PredictionService/Predict  tensor: serving_default ``image`` DT_FLOAT;
                                                      jpeg: predict_images ``images`` DT_STRING
v2      inference.GRPCInferenceService/ModelInfer     tensor: ``image`` FP32; jpeg: ``images``
                                                      BYTES; both in raw_input_contents
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import grpc
import numpy as np
from PIL import Image

from tlserve import repository as repo
from tlserve.errors import TlserveError, UsageError
from tlserve.service.bench.load import Call
from tlserve.service.bench.stats import OK
from tlserve.service.transport.oip_codec import join_bytes
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb
from tlserve.service.wire.tfs import serving_pb2
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb
from tlserve.service.wire.tlserve.v1 import inference_pb2 as native_pb

APIS = ("native", "tfs", "v2")
INPUTS = ("tensor", "jpeg")


@dataclass(frozen=True)
class Payload:
    """One request's images: float32 pixels [B, H, W, 3] (tensor input) or B encoded images (jpeg)."""

    pixels: np.ndarray | None = None
    images: list[bytes] | None = None


def generated_jpeg(height: int, width: int) -> bytes:
    """A colour gradient with a little noise at quality 90: sized like a photo of that size, not like
    pure noise (which JPEG cannot compress and which decodes slower than any photo)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 0 * x], axis=-1)
    rgb += np.random.default_rng(0).normal(0, 8, rgb.shape)
    buffer = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_payload(kind: str, batch: int, height: int, width: int, image: bytes | None = None) -> Payload:
    if kind == "tensor":
        pixels = np.random.default_rng(0).uniform(0, 255, (batch, height, width, 3)).astype(np.float32)
        return Payload(pixels=pixels)
    return Payload(images=[image if image is not None else generated_jpeg(height, width)] * batch)


@dataclass(frozen=True)
class Request:
    method: str
    """The gRPC method path, e.g. /tlserve.v1.Inference/Classify."""
    body: bytes
    """The serialized request message."""
    answer: Callable[[bytes], tuple[int, int]]
    """A serialized answer -> (the version that answered, rows); raises if it does not parse."""


def _path(module: ModuleType, service: str, method: str) -> str:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[method].name}"


def _native(model: str, version: int, payload: Payload) -> Request:
    assert payload.images is not None
    body = native_pb.ClassifyRequest(model=model, version=version, images=payload.images, top_k=1)

    def answer(data: bytes) -> tuple[int, int]:
        response = native_pb.ClassifyResponse.FromString(data)
        return int(response.version), len(response.predictions)

    return Request(_path(native_pb, "Inference", "Classify"), body.SerializeToString(), answer)


def _tfs(model: str, version: int, payload: Payload) -> Request:
    request = serving_pb2.PredictRequest()
    request.model_spec.name = model
    if version:
        request.model_spec.version.value = version
    if payload.pixels is not None:
        request.model_spec.signature_name = repo.SIGNATURE_PIXELS
        tensor = request.inputs[repo.INPUT_NAME]
        tensor.dtype = tf_pb.DT_FLOAT
        tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in payload.pixels.shape)
        tensor.tensor_content = payload.pixels.tobytes()
    else:
        assert payload.images is not None
        request.model_spec.signature_name = repo.SIGNATURE_IMAGES
        tensor = request.inputs[repo.IMAGES_INPUT_NAME]
        tensor.dtype = tf_pb.DT_STRING
        tensor.tensor_shape.dim.add(size=len(payload.images))
        tensor.string_val.extend(payload.images)

    def answer(data: bytes) -> tuple[int, int]:
        response = serving_pb2.PredictResponse.FromString(data)
        dims = response.outputs[repo.OUTPUT_NAME].tensor_shape.dim
        return int(response.model_spec.version.value), dims[0].size if dims else 0

    return Request(_path(serving_pb2, "PredictionService", "Predict"), request.SerializeToString(), answer)


def _v2(model: str, version: int, payload: Payload) -> Request:
    request = oip_pb.ModelInferRequest(model_name=model, model_version=str(version) if version else "")
    if payload.pixels is not None:
        request.inputs.add(name=repo.INPUT_NAME, datatype="FP32", shape=list(payload.pixels.shape))
        request.raw_input_contents.append(payload.pixels.astype("<f4").tobytes())
    else:
        assert payload.images is not None
        request.inputs.add(name=repo.IMAGES_INPUT_NAME, datatype="BYTES", shape=[len(payload.images)])
        request.raw_input_contents.append(join_bytes(payload.images))

    def answer(data: bytes) -> tuple[int, int]:
        response = oip_pb.ModelInferResponse.FromString(data)
        rows = response.outputs[0].shape[0] if response.outputs and response.outputs[0].shape else 0
        return int(response.model_version or 0), int(rows)

    path = _path(oip_pb, "GRPCInferenceService", "ModelInfer")
    return Request(path, request.SerializeToString(), answer)


BUILDERS = {"native": _native, "tfs": _tfs, "v2": _v2}


def build_request(api: str, model: str, version: int, payload: Payload) -> Request:
    """The request of ``api`` carrying ``payload``; ``version`` 0 asks for the newest serving."""
    return BUILDERS[api](model, version, payload)


def grpc_call(
    channel: grpc.aio.Channel,
    request: Request,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> Call:
    """Sends ``request`` as it is, and returns "OK" or the status code's name."""
    # NOTE: a bare multicallable sends the bytes serialized once, above, and does not parse the answer:
    # the load generator shares the machine's cores with a loopback server, so the less CPU it spends
    # per call the more the figures say about the server (perf_analyzer prepares its inputs too).
    send = channel.unary_unary(request.method)

    async def call() -> str:
        try:
            await send(request.body, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        return OK

    return call


async def probe(
    channel: grpc.aio.Channel,
    request: Request,
    batch: int,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> int:
    """Send ``request`` once and check the answer: its ``batch`` rows; the version that answered."""
    try:
        data = await channel.unary_unary(request.method)(request.body, timeout=timeout_s, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        message = f"the first request failed: {exc.code().name}: {exc.details()}"
        if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            raise UsageError(message) from None  # what was asked for does not fit this server's model
        raise TlserveError(message) from None
    version, rows = request.answer(data)
    if rows != batch:
        raise TlserveError(f"the first request's answer has {rows} rows for a batch of {batch}")
    return version
