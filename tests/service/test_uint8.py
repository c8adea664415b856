"""UINT8 pixel tensors (a quarter of FP32's bytes on the wire) through TF Serving Predict (DT_UINT8,
tensor_content and int_val), OIP gRPC (raw and uint_contents) and OIP REST (JSON): the same answers
as the same pixels sent as FP32, and values a uint8 cannot hold refused as INVALID_ARGUMENT."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import numpy as np
import pytest

from tests.service.conftest import ServerProcess
from tests.service.tiny import SIZE
from tlserve.service import messages
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from tlserve.service.wire.tfs import serving_pb2_grpc
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


def test_tfs_predict_takes_dt_uint8(server: ServerProcess, pixels: np.ndarray) -> None:
    with server.client() as client, grpc.insecure_channel(server.target) as channel:
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        _, as_float = client.predict("colors", pixels.astype(np.float32))
        _, as_uint8 = client.predict("colors", pixels)  # DT_UINT8, tensor_content
        np.testing.assert_array_equal(as_uint8, as_float)
        request = messages.predict_request("colors", pixels=pixels)
        tensor = request.inputs["image"]
        assert tensor.dtype == tf_pb.DT_UINT8 and len(tensor.tensor_content) == pixels.size
        tensor.ClearField("tensor_content")
        tensor.int_val.extend(pixels.ravel().tolist())  # the same values, typed
        typed = stub.Predict(request, timeout=10)
        np.testing.assert_array_equal(
            np.frombuffer(typed.outputs["probabilities"].tensor_content, np.float32).reshape(as_float.shape),
            as_float,
        )
        tensor.int_val[0] = 300  # int_val is int32: a uint8 cannot hold it
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "out of range for DT_UINT8" in str(refused.value.details())


def test_oip_takes_uint8_raw_and_typed(server: ServerProcess, pixels: np.ndarray) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)

        def probabilities(request: oip.ModelInferRequest) -> np.ndarray:
            response = stub.ModelInfer(request, timeout=10)
            return np.frombuffer(response.raw_output_contents[0], np.float32)

        as_float = probabilities(
            messages.infer_request("colors", pixels.astype(np.float32), outputs=["probabilities"])
        )
        raw = messages.infer_request("colors", pixels, outputs=["probabilities"])
        assert raw.inputs[0].datatype == "UINT8" and len(raw.raw_input_contents[0]) == pixels.size
        np.testing.assert_array_equal(probabilities(raw), as_float)
        typed = oip.ModelInferRequest(model_name="colors")
        typed.inputs.add(name="image", datatype="UINT8", shape=list(pixels.shape))
        typed.inputs[0].contents.uint_contents.extend(pixels.ravel().tolist())
        typed.outputs.add(name="probabilities")
        response = stub.ModelInfer(typed, timeout=10)
        np.testing.assert_array_equal(
            np.asarray(response.outputs[0].contents.fp32_contents, np.float32), as_float
        )
        typed.inputs[0].contents.uint_contents[0] = 256
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(typed, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UINT8 values must be 0..255" in str(refused.value.details())
        short = messages.infer_request("colors", pixels)
        short.raw_input_contents[0] = short.raw_input_contents[0][:-1]
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(short, timeout=10)
        assert "UINT8" in str(refused.value.details()) and "needs" in str(refused.value.details())


def _post(server: ServerProcess, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/v2/models/colors/infer", data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_oip_rest_takes_uint8_json(server: ServerProcess, pixels: np.ndarray) -> None:
    def body(datatype: str, data: list[Any]) -> dict[str, Any]:
        return {
            "inputs": [{"name": "image", "datatype": datatype, "shape": list(pixels.shape), "data": data}]
        }

    status, as_float = _post(server, body("FP32", pixels.astype(float).ravel().tolist()))
    assert status == 200
    status, as_uint8 = _post(server, body("UINT8", pixels.ravel().tolist()))
    assert status == 200
    assert as_uint8["outputs"][0]["data"] == as_float["outputs"][0]["data"]
    for bad in (256, -1, 1.5):
        data = pixels.ravel().tolist()
        data[0] = bad
        status, answer = _post(server, body("UINT8", data))
        assert status == 400 and "UINT8 data must be integers 0..255" in answer["error"], (bad, answer)
