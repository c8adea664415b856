"""The Open Inference Protocol (KServe v2) over HTTP, on the REST port, through the gRPC path.

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/NAME[/versions/N] | .../ready
    POST /v2/models/NAME[/versions/N]/infer

An HTTP inference request is turned into the protocol's ModelInferRequest and answered by the same
function as gRPC's ModelInfer (tlserve.service.transport.oip.infer), then turned back into JSON.
Tensors are JSON ``data`` (flat or nested; BYTES as strings, or base64 with the input parameter
``"content_type": "base64"``) or use the binary tensor extension that tritonclient speaks by default
(``Inference-Header-Content-Length``: the JSON header, then each tensor's bytes; BYTES elements
4-byte-length-prefixed).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from aiohttp import web

from tlserve.service.core import InferenceCore
from tlserve.service.domain import ModelRef
from tlserve.service.errors import InvalidArgument
from tlserve.service.parsing import parse_count, parse_number, parse_version
from tlserve.service.transport import oip_codec
from tlserve.service.transport.http import (
    LARGE_BODY_BYTES,
    SHARE,
    continue_later,
    json_numbers,
    max_json_values,
    parse_json,
    read_body,
)
from tlserve.service.transport.offloop import off_loop
from tlserve.service.transport.oip import infer, model_metadata
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as pb

HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL = r"/v2/models/{name:[^/]+}"
VERSIONED = MODEL + r"/versions/{version:[^/]+}"


def _version(request: web.Request) -> str:
    return request.match_info.get("version", "")


def _ref(request: web.Request) -> ModelRef:
    return ModelRef(request.match_info["name"], parse_version(_version(request)))


async def _split_body(request: web.Request, body: bytes, max_values: int) -> tuple[dict[str, Any], bytes]:
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        # NOTE: tritonclient sends its JSON-only requests as application/octet-stream
        if request.content_type not in ("application/json", "application/octet-stream", ""):
            raise InvalidArgument(f"expected Content-Type application/json (or the binary extension's "
                                  f"{HEADER_LENGTH} header); got {request.content_type}")  # fmt: skip
        header, binary = body, b""
    else:
        size = parse_number(length, HEADER_LENGTH)
        if size > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} {size} does not fit a body of {len(body)} bytes")
        header, binary = body[:size], body[size:]
    return await parse_json(header, max_values, request[SHARE]), binary


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: parameters must be an object")
    return value


def to_proto(
    name: str, version: str, body: dict[str, Any], binary: bytes, max_elements: int
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, model_version=version, id=str(body.get("id", "")))
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument('"inputs" must be a list of tensors')
    offset = 0
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise InvalidArgument(f"inputs[{index}] must be an object")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise InvalidArgument(f"inputs[{index}].shape must be a list of integers")
        if any(d < 0 or d > max_elements for d in shape):
            raise InvalidArgument(f"inputs[{index}]: invalid shape {shape}")
        entry = request.inputs.add(name=str(tensor.get("name", "")), datatype=str(tensor.get("datatype", "")),
                                   shape=shape)  # fmt: skip
        parameters = _parameters(tensor.get("parameters"), f"inputs[{index}]")
        if "binary_data_size" in parameters:
            size = parse_count(parameters["binary_data_size"], f"inputs[{index}]: binary_data_size", 0)
            if offset + size > len(binary):
                raise InvalidArgument(f"inputs[{index}]: binary_data_size {size!r} does not fit the "
                                      f"{len(binary) - offset} binary bytes left")  # fmt: skip
            request.raw_input_contents.append(binary[offset : offset + size])
            offset += size
            continue
        if "data" not in tensor:
            raise InvalidArgument(f'inputs[{index}]: needs "data" or the binary_data_size parameter')
        _typed(entry, tensor["data"], parameters, index, max_elements)
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} binary bytes after the last tensor")
    outputs = body.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgument('"outputs" must be a list')
    for index, wanted in enumerate(outputs):
        if not isinstance(wanted, dict):
            raise InvalidArgument(f"outputs[{index}] must be an object")
        output = request.outputs.add(name=str(wanted.get("name", "")))
        parameters = _parameters(wanted.get("parameters"), f"outputs[{index}]")
        if oip_codec.CLASSIFICATION in parameters:
            k = parse_count(parameters[oip_codec.CLASSIFICATION], "the classification parameter (the top-k)")
            output.parameters[oip_codec.CLASSIFICATION].int64_param = k
        for name in oip_codec.UNKNOWN_PARAMETERS:
            if name in parameters:
                value = parameters[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidArgument(
                        f"the {name} parameter must be a number; got {type(value).__name__}"
                    )
                try:
                    output.parameters[name].double_param = float(value)
                except OverflowError:  # NOTE: a JSON integer of hundreds of digits
                    raise InvalidArgument(f"the {name} parameter is out of range") from None
    return request


def _typed(entry: Any, data: Any, parameters: dict[str, Any], index: int, max_elements: int) -> None:
    if entry.datatype == "BYTES":
        items = data if isinstance(data, list) else [data]
        if len(items) > max_elements or not all(isinstance(x, str) for x in items):
            raise InvalidArgument(f"inputs[{index}]: BYTES data must be a list of strings")
        if parameters.get("content_type") == "base64":
            try:
                entry.contents.bytes_contents.extend(base64.b64decode(x, validate=True) for x in items)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"inputs[{index}]: not valid base64") from None
        else:
            entry.contents.bytes_contents.extend(x.encode() for x in items)
        return
    if entry.datatype not in oip_codec.ITEM_BYTES:
        raise InvalidArgument(f"inputs[{index}]: unknown datatype {entry.datatype!r}")
    values = json_numbers(data, f"inputs[{index}]: data must be numbers (flat or nested lists)").ravel()
    if entry.datatype == "UINT8":
        whole = bool(np.all(values == np.rint(values))) if values.size else True
        if not whole or (values.size and (values.min() < 0 or values.max() > 255)):
            raise InvalidArgument(f"inputs[{index}]: UINT8 data must be integers 0..255")
        entry.contents.uint_contents.extend(values.astype(np.uint32).tolist())
        return
    if entry.datatype != "FP32":
        raise InvalidArgument(f"input {entry.name!r} must be FP32 or UINT8; got {entry.datatype}")
    entry.contents.fp32_contents.extend(values.tolist())


def from_proto(response: pb.ModelInferResponse, binary: bool) -> web.Response:
    outputs, blobs = [], []
    for index, output in enumerate(response.outputs):
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if binary:
            blob = response.raw_output_contents[index]
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif output.datatype == "BYTES":
            entry["data"] = [x.decode() for x in output.contents.bytes_contents]
        else:
            entry["data"] = list(output.contents.fp32_contents)
        outputs.append(entry)
    header = json.dumps({"model_name": response.model_name, "model_version": response.model_version,
                         "id": response.id, "outputs": outputs}).encode()  # fmt: skip
    if not binary:
        return web.Response(body=header, content_type="application/json")
    return web.Response(body=header + b"".join(blobs), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(header))})  # fmt: skip


class OipRest:
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2", self.server_metadata)
        for prefix in (MODEL, VERSIONED):
            app.router.add_get(prefix, self.model_metadata)
            app.router.add_get(prefix + "/ready", self.model_ready)
            app.router.add_post(prefix + "/{method:infer}", self.infer, expect_handler=continue_later)

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.core.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        server = self.core.server_metadata()
        extensions = [*server.extensions, "binary_tensor_data"]
        return web.json_response({"name": server.name, "version": server.version, "extensions": extensions})

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(model_metadata(self.core.metadata(_ref(request))))

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = self.core.ready(_ref(request))
        return web.json_response({"name": request.match_info["name"], "ready": ready},
                                 status=200 if ready else 503)  # fmt: skip

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], _version(request)
        metadata = self.core.metadata(_ref(request))
        data = await read_body(request)
        body, binary = await _split_body(
            request, data, max_json_values(self.core.settings, metadata.image_size)
        )
        max_elements = self.core.settings.max_message_bytes // 4
        large = len(data) >= LARGE_BODY_BYTES
        del data
        proto = await off_loop(large, to_proto, name, version, body, binary, max_elements)
        wants_binary = bool(
            _parameters(body.get("parameters"), "parameters").get("binary_data_output")
        ) or any(
            isinstance(o, dict) and _parameters(o.get("parameters"), "outputs").get("binary_data")
            for o in body.get("outputs", [])
        )
        response = await infer(self.core, proto, None, raw=wants_binary)
        return from_proto(response, wants_binary)
