"""Native API, health, reflection, metrics, and no TensorFlow in a server that serves ONNX."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.service.conftest import ServerProcess
from tests.service.images import encoded
from tests.service.tiny import LABELS, SIZE


def test_classify_top_k_and_version(server: ServerProcess) -> None:
    with server.client() as client:
        result = client.classify("colors", [encoded("green"), encoded("red", "JPEG")], top_k=2)
    assert (result.model, result.version) == ("colors", 1)
    assert result.predictions[0][0].label == "green"
    assert result.predictions[1][0].label == "red"
    assert all(len(p) == 2 for p in result.predictions)
    top = result.predictions[0]
    assert top[0].score >= top[1].score and LABELS[top[0].index] == top[0].label


def test_classify_default_top_k_is_capped_at_the_classes(server: ServerProcess) -> None:
    with server.client() as client:
        result = client.classify("colors", [encoded("blue")], top_k=0)
    assert len(result.predictions[0]) == len(LABELS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF"])
def test_every_format_the_signature_takes_is_served_by_default(server: ServerProcess, fmt: str) -> None:
    with server.client() as client:
        result = client.classify("colors", [encoded(color, fmt) for color in LABELS], top_k=1)
    assert [p[0].label for p in result.predictions] == LABELS


@pytest.mark.parametrize(
    ("images", "top_k", "code", "text"),
    [
        ([], 1, grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
        ([encoded("red"), b"\x89PNG\r\n\x1a\n truncated"], 1, grpc.StatusCode.INVALID_ARGUMENT, "image 1"),
        (
            [encoded("red", "TIFF")],
            1,
            grpc.StatusCode.INVALID_ARGUMENT,
            "image 0: not a JPEG, PNG, BMP or GIF image",
        ),
        ([encoded("red")], -1, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    ],
)
def test_classify_bad_input(server: ServerProcess, images: list[bytes], top_k: int, code, text: str) -> None:
    with server.client() as client:
        with pytest.raises(grpc.RpcError) as error:
            client.classify("colors", images, top_k=top_k)
        assert error.value.code() == code
        assert text in error.value.details()
        assert client.classify("colors", [encoded("red")]).predictions[0][0].label == "red"


def test_list_models_reports_backend_and_providers(server: ServerProcess) -> None:
    with server.client() as client:
        models = client.list_models()
    [version] = models["colors"]
    assert version.state == "AVAILABLE"
    assert (version.version, version.labels, version.height, version.width) == (1, LABELS, SIZE, SIZE)
    assert version.backend == "onnxruntime"
    assert version.providers[-1] == "CPUExecutionProvider"
    assert version.artifact == "model.onnx"
    assert version.base == "tiny-colors" and version.exported_as == "colors/1"


def test_health_per_model(server: ServerProcess) -> None:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.target))
    for service in ("", "colors"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(server: ServerProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.target))
    [listing] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for s in listing.list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService", "tlserve.v1.Inference",
            "grpc.health.v1.Health"} <= names  # fmt: skip
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="tensorflow.serving.PredictionService"
    )
    [described] = stub.ServerReflectionInfo(iter([request]), timeout=5)
    assert described.file_descriptor_response.file_descriptor_proto


def test_metrics_count_requests(server: ServerProcess) -> None:
    with server.client() as client:
        client.classify("colors", [encoded("red")])
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    assert (
        'tlserve_requests_total{api="native",code="OK",method="Classify",model="colors",version="1"}' in text
    )
    assert "tlserve_request_duration_seconds_bucket" in text
    assert 'tlserve_model_ready{model="colors"} 1.0' in text


UNPARSEABLE = {
    "/tlserve.v1.Inference/Classify": ("native", b"\x0a\x02\xff\xfe", "String field had bad UTF-8"),
    "/tensorflow.serving.PredictionService/Predict": ("tfs", b"\xff\xff\xff", "Wire format was corrupt"),
    "/inference.GRPCInferenceService/ModelInfer": ("oip", b"\x0a", "not a valid protobuf message"),
}


@pytest.mark.parametrize("method", list(UNPARSEABLE))
def test_unparseable_messages_are_invalid_argument_and_counted(server: ServerProcess, method: str) -> None:
    api, data, text = UNPARSEABLE[method]
    name = method.rsplit("/", 1)[1]
    counted = rf'tlserve_requests_total{{api="{api}",code="INVALID_ARGUMENT",method="{name}",[^}}]*}} (\S+)'

    def count() -> float:
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read()
        return sum(float(v) for v in re.findall(counted, metrics.decode()))

    before, lines = count(), len(server.lines)
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as error:
        channel.unary_unary(method)(data, timeout=10)  # the bytes as they are, no serializer
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in error.value.details()
    assert count() == before + 1
    assert not [line for line in server.lines[lines:] if "Traceback" in line or " ERROR " in line]


def test_serving_onnx_never_imports_tensorflow(server: ServerProcess) -> None:
    with server.client() as client:
        client.classify("colors", [encoded("red")])
        client.predict_images("colors", [encoded("red")])
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    loaded = {line.split()[-1] for line in maps.splitlines() if "/" in line}
    assert any("onnxruntime" in path for path in loaded)  # the check can see libraries
    assert not [path for path in loaded if "tensorflow" in path.lower()]


def test_request_id_is_echoed_on_success_and_error(server: ServerProcess) -> None:
    from tlserve.service.wire.tlserve.v1 import inference_pb2, inference_pb2_grpc

    stub = inference_pb2_grpc.InferenceStub(grpc.insecure_channel(server.target))
    _, call = stub.ListModels.with_call(
        inference_pb2.ListModelsRequest(), metadata=[("x-request-id", "abc-1")]
    )
    assert ("x-request-id", "abc-1") in call.trailing_metadata()
    with pytest.raises(grpc.RpcError) as error:
        stub.Classify(
            inference_pb2.ClassifyRequest(model="nope", images=[b"x"]), metadata=[("x-request-id", "abc-2")]
        )
    assert ("x-request-id", "abc-2") in error.value.trailing_metadata()
    _, call = stub.ListModels.with_call(inference_pb2.ListModelsRequest())
    assert len(dict(call.trailing_metadata())["x-request-id"]) == 32  # one made up when none was sent
