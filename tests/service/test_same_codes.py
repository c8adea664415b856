"""The same bad request gets the same code through every API: TF Serving's (gRPC and REST), the Open
Inference Protocol's (gRPC and REST) and the native one, each REST status the one the single table
(transport.calls.STATUS) gives that code."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.service.conftest import ServerProcess
from tests.service.images import encoded
from tlserve.service.client import channel
from tlserve.service.errors import Code
from tlserve.service.transport.calls import STATUS
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb2
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from tlserve.service.wire.tfs import serving_pb2, serving_pb2_grpc
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb
from tlserve.service.wire.tlserve.v1 import inference_pb2, inference_pb2_grpc

GOOD = encoded("red")
CASES: dict[str, tuple[str, int | None, list[bytes], Code]] = {
    # case: model, version (None: newest), images, the code every API answers
    "unknown model": ("nope", None, [GOOD], Code.NOT_FOUND),
    "unknown version": ("colors", 7, [GOOD], Code.NOT_FOUND),
    "not an image": ("colors", None, [GOOD, b"junk"], Code.INVALID_ARGUMENT),
    "no images": ("colors", None, [], Code.INVALID_ARGUMENT),
    "more than max_batch_size": ("colors", None, [GOOD] * 9, Code.INVALID_ARGUMENT),
}
Send = Callable[[str, int | None, list[bytes]], str]
"""Sends one request; the name of the code that came back."""


@pytest.fixture(scope="module")
def apis(server: ServerProcess) -> Iterator[dict[str, Send]]:
    grpc_channel = channel(server.target)
    tfs = serving_pb2_grpc.PredictionServiceStub(grpc_channel)
    oip = oip_grpc.GRPCInferenceServiceStub(grpc_channel)
    native = inference_pb2_grpc.InferenceStub(grpc_channel)

    def grpc_code(call: Callable[[], Any]) -> str:
        try:
            call()
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"

    def http_code(path: str, body: dict[str, Any]) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", method="POST",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10):
                return "OK"
        except urllib.error.HTTPError as exc:
            codes = [code.name for code, (_, status) in STATUS.items() if status == exc.code]
            return codes[0] if codes else f"HTTP {exc.code}"

    def tfs_grpc(model: str, version: int | None, images: list[bytes]) -> str:
        request = serving_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = model, "predict_images"
        if version is not None:
            request.model_spec.version.value = version
        tensor = request.inputs["images"]
        tensor.dtype = tf_pb.DT_STRING
        tensor.tensor_shape.dim.add(size=len(images))
        tensor.string_val.extend(images)
        return grpc_code(lambda: tfs.Predict(request, timeout=10))

    def tfs_rest(model: str, version: int | None, images: list[bytes]) -> str:
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
        b64 = [{"b64": base64.b64encode(i).decode()} for i in images]
        return http_code(path, {"signature_name": "predict_images", "instances": b64})

    def oip_grpc_(model: str, version: int | None, images: list[bytes]) -> str:
        request = oip_pb2.ModelInferRequest(model_name=model, model_version=str(version or ""))
        tensor = request.inputs.add(name="images", datatype="BYTES", shape=[len(images)])
        tensor.contents.bytes_contents.extend(images)
        return grpc_code(lambda: oip.ModelInfer(request, timeout=10))

    def oip_rest(model: str, version: int | None, images: list[bytes]) -> str:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        tensor = {"name": "images", "datatype": "BYTES", "shape": [len(images)],
                  "data": [base64.b64encode(i).decode() for i in images],
                  "parameters": {"content_type": "base64"}}  # fmt: skip
        return http_code(path, {"inputs": [tensor]})

    def native_grpc(model: str, version: int | None, images: list[bytes]) -> str:
        request = inference_pb2.ClassifyRequest(model=model, version=version or 0, images=images)
        return grpc_code(lambda: native.Classify(request, timeout=10))

    yield {"tfs grpc": tfs_grpc, "tfs rest": tfs_rest, "oip grpc": oip_grpc_, "oip rest": oip_rest,
           "native grpc": native_grpc}  # fmt: skip
    grpc_channel.close()


@pytest.mark.parametrize("case", list(CASES))
def test_one_bad_request_one_code_on_every_api(apis: dict[str, Send], case: str) -> None:
    model, version, images, code = CASES[case]
    answers = {api: send(model, version, images) for api, send in apis.items()}
    assert answers == dict.fromkeys(apis, code.name)


def test_a_good_request_is_ok_on_every_api(apis: dict[str, Send]) -> None:
    assert {api: send("colors", 1, [GOOD]) for api, send in apis.items()} == dict.fromkeys(apis, "OK")


def test_every_code_has_a_grpc_and_an_http_status() -> None:
    assert set(STATUS) == set(Code)
    assert all(grpc_status.name == code.name for code, (grpc_status, _) in STATUS.items())
    assert len({status for _, status in STATUS.values()}) == len(STATUS)  # each HTTP status says one code
