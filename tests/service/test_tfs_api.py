"""The TF Serving API, driven with the official tensorflow-serving-api stubs against a server process."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.service.conftest import ServerProcess
from tests.service.images import encoded, solid
from tests.service.tiny import LABELS, SIZE
from tlserve import repository as repo

# The tiny model's class for each colour.
EXPECTED = {"red": "red", "green": "green", "blue": "blue"}


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> grpc.Channel:
    return grpc.insecure_channel(server.target)


@pytest.fixture(scope="module")
def predictions(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(
    model: str = "colors", signature: str = "", **inputs: tf.Tensor
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def test_predict_serving_default_matches_onnxruntime(predictions, module_repo: Path) -> None:
    pixels = np.stack([solid(c, SIZE) for c in ("red", "green", "blue")])
    response = predictions.Predict(predict_request(image=pixels), timeout=10)
    got = tf.make_ndarray(response.outputs[repo.OUTPUT_NAME])
    session = ort.InferenceSession(
        str(module_repo / "colors" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run([repo.OUTPUT_NAME], {"image": pixels})
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [LABELS[i] for i in got.argmax(1)] == ["red", "green", "blue"]
    assert response.model_spec.name == "colors"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_images_signature(predictions) -> None:
    images = [encoded("red", "PNG"), encoded("green", "JPEG"), encoded("blue", "PNG", size=50)]
    request = predict_request(signature="predict_images", images=np.array(images, dtype=object))
    response = predictions.Predict(request, timeout=10)
    got = tf.make_ndarray(response.outputs["probabilities"])
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)
    assert [LABELS[i] for i in got.argmax(1)] == ["red", "green", "blue"]


def test_predict_output_filter_and_explicit_version(predictions) -> None:
    request = predict_request(image=solid("red", SIZE)[None])
    request.output_filter.append("probabilities")
    request.model_spec.version.value = 1
    response = predictions.Predict(request, timeout=10)
    assert list(response.outputs) == ["probabilities"]


def test_classify_with_tf_examples(predictions) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "colors"
    for color in ("blue", "red"):
        example = request.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(encoded(color, "JPEG"))
    response = predictions.Classify(request, timeout=10)
    classifications = response.result.classifications
    assert [c.classes[0].label for c in classifications] == ["blue", "red"]
    for c in classifications:
        scores = [x.score for x in c.classes]
        assert sorted({x.label for x in c.classes}) == LABELS
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1, abs=1e-5)
    assert response.model_spec.version.value == 1


def test_get_model_metadata_packs_signature_defs(predictions) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2 as md

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "colors"
    response = predictions.GetModelMetadata(request, timeout=10)
    signatures = md.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert set(defs) == {"serving_default", "predict_images", "classify"}
    image = defs["serving_default"].inputs["image"]
    assert image.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in image.tensor_shape.dim] == [-1, SIZE, SIZE, 3]
    assert defs["predict_images"].inputs["images"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in defs["serving_default"].outputs["probabilities"].tensor_shape.dim] == [-1, 3]
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"
    assert defs["classify"].method_name == "tensorflow/serving/classify"
    assert response.model_spec.version.value == 1


def test_get_model_status(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "colors"
    response = stub.GetModelStatus(request, timeout=10)
    [status] = response.model_version_status
    assert (status.version, status.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    request.model_spec.version.value = 9
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelStatus(request, timeout=10)
    assert error.value.code() == NOT_FOUND
    request.model_spec.version_label = "stable"  # the server's fixture labels version 1
    assert stub.GetModelStatus(request, timeout=10) == response
    request.model_spec.version_label = "beta"
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelStatus(request, timeout=10)
    assert error.value.code() == NOT_FOUND and "no version label 'beta'" in error.value.details()


def _pixels(n: int = 1) -> np.ndarray:
    return np.stack([solid("red", SIZE)] * n)


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
BAD_REQUESTS = {
    "unknown model": (lambda: predict_request("nope", image=_pixels()), NOT_FOUND, "'nope' not found"),
    "empty model name": (lambda: predict_request("", image=_pixels()), INVALID, "no model name"),
    "unknown version": (
        lambda: _with_version(predict_request(image=_pixels()), 7), NOT_FOUND, "version 7 is not served"),
    "unknown label": (
        lambda: _with_label(predict_request(image=_pixels()), "canary"), NOT_FOUND, "no version label"),
    "unknown signature": (
        lambda: predict_request(signature="nope", image=_pixels()), INVALID, "signature 'nope'"),
    "wrong input name": (lambda: predict_request(pixels=_pixels()), INVALID, "got: pixels"),
    "wrong dtype": (
        lambda: predict_request(image=_pixels().astype(np.int32)), INVALID, "float32 or uint8; got int32"),
    "wrong shape": (
        lambda: predict_request(image=np.zeros((1, SIZE + 1, SIZE, 3), np.float32)),
        INVALID, f"[N, {SIZE}, {SIZE}, 3]"),
    "NaN pixels": (
        lambda: predict_request(image=np.full((1, SIZE, SIZE, 3), np.nan, np.float32)),
        INVALID, "finite"),
    "strings to serving_default": (
        lambda: predict_request(image=np.array([b"x"], dtype=object)), INVALID, "DT_STRING"),
    "undecodable image, with its index": (
        lambda: predict_request(signature="predict_images",
                                images=np.array([encoded("red"), b"not an image"], dtype=object)),
        INVALID, "image 1: not a JPEG, PNG, BMP or GIF image"),
    "empty batch": (
        lambda: predict_request(signature="predict_images", images=np.array([], dtype=object)),
        INVALID, "empty batch"),
    "batch above the maximum": (
        lambda: predict_request(image=_pixels(9)), INVALID, "above the maximum of 8"),
    "rank above 8": (
        lambda: _with_shape(predict_request(image=_pixels()), [1] * 9), INVALID, "rank 9"),
    "huge declared shape with a zero dimension": (
        lambda: _with_shape(predict_request(image=np.zeros(0, np.float32)), [0, 1 << 40, 1 << 40]),
        INVALID, "is above"),
    "shape product beyond int64 with one value": (
        lambda: _with_shape(predict_request(image=np.ones(1, np.float32)), [1 << 31, 1 << 31, 1 << 31, 3]),
        INVALID, "above the limit"),
    "duplicate output filter": (
        lambda: _with_filter(predict_request(image=_pixels()), ["probabilities", "probabilities"]),
        INVALID, "output_filter"),
    "message above the size limit": (
        lambda: predict_request(signature="predict_images", images=np.array([b"x" * (2 << 20)], object)),
        EXHAUSTED, "larger than max"),
}  # fmt: skip


def _with_version(request: predict_pb2.PredictRequest, version: int) -> predict_pb2.PredictRequest:
    request.model_spec.version.value = version
    return request


def _with_shape(request: predict_pb2.PredictRequest, shape: list[int]) -> predict_pb2.PredictRequest:
    tensor = request.inputs["image"]
    del tensor.tensor_shape.dim[:]
    tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape)
    return request


def _with_label(request: predict_pb2.PredictRequest, label: str) -> predict_pb2.PredictRequest:
    request.model_spec.version_label = label
    return request


def _with_filter(request: predict_pb2.PredictRequest, names: list[str]) -> predict_pb2.PredictRequest:
    request.output_filter.extend(names)
    return request


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_their_status_and_the_server_keeps_serving(predictions, case: str) -> None:
    make, code, text = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as error:
        predictions.Predict(make(), timeout=10)
    assert error.value.code() == code, error.value.details()
    assert text in error.value.details()
    response = predictions.Predict(predict_request(image=_pixels()), timeout=10)
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (1, 3)
