"""Open Inference Protocol (KServe v2) over gRPC, driven by the real tritonclient.

tritonclient needs protobuf < 7 and this project protobuf >= 7, so it lives in its own virtual
environment (.venv-triton, made on first use from the package registry); tests/service/oip_client.py
runs there against a server process and reports what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.service.conftest import ServerProcess
from tests.service.images import encoded, solid
from tests.service.tiny import LABELS, SIZE
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2

ROOT = Path(__file__).resolve().parents[2]
TRITON_VENV = ROOT / ".venv-triton"
TRITONCLIENT = "tritonclient[grpc,http]>=2.73,<3"


@pytest.fixture(scope="session")
def triton_python() -> Path:
    python = TRITON_VENV / "bin" / "python"
    stamp = TRITON_VENV / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRITON_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", TRITONCLIENT, "numpy"], check=True, timeout=900
        )
        stamp.touch()
    return python


@pytest.fixture(scope="module")
def seen(
    triton_python: Path, server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    images = tmp_path_factory.mktemp("oip-images")
    for color, fmt, suffix in (("red", "PNG", "png"), ("green", "JPEG", "jpg"), ("blue", "PNG", "png")):
        (images / f"{color}.{suffix}").write_bytes(encoded(color, fmt))
    np.save(images / "pixels.npy", np.stack([solid(c, SIZE) for c in ("red", "green", "blue")]))
    client = [str(triton_python), str(Path(__file__).parent / "oip_client.py")]
    http_target = f"127.0.0.1:{server.http_port}"
    command = [*client, server.target, str(images), http_target]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    yield json.loads(result.stdout)


def test_health_and_metadata(seen: dict[str, Any]) -> None:
    assert seen["live"] is True and seen["ready"] is True
    assert seen["model_ready"] == [True, True, False, False]
    assert seen["server_metadata"]["name"] == "tlserve"
    assert "classification" in seen["server_metadata"]["extensions"]
    metadata = seen["model_metadata"]
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (
        "colors",
        ["1"],
        "onnxruntime_onnx",
    )
    assert metadata["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": ["-1", str(SIZE), str(SIZE), "3"]},
        {"name": "images", "datatype": "BYTES", "shape": ["-1"]},
    ]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "3"]}]
    assert seen["index"]["models"] == [{"name": "colors", "version": "1", "state": "READY"}]


def test_fp32_raw_and_typed_agree(seen: dict[str, Any]) -> None:
    raw = np.asarray(seen["fp32_raw"]["probabilities"])
    assert [LABELS[i] for i in raw.argmax(1)] == ["red", "green", "blue"]
    assert (seen["fp32_raw"]["id"], seen["fp32_raw"]["version"]) == ("r-1", "1")
    typed = seen["fp32_typed"]
    assert typed["shape"] == [3, 3] and typed["raw"] == 0  # typed in, typed out
    np.testing.assert_allclose(np.asarray(typed["values"]).reshape(3, 3), raw, atol=1e-6)


def test_bytes_images_and_the_classification_extension(seen: dict[str, Any]) -> None:
    assert [LABELS[i] for i in np.asarray(seen["bytes"]).argmax(1)] == ["red", "green", "blue"]
    name, probabilities = seen["discovered"]  # the BYTES input as the metadata lists it
    assert name == "images" and [LABELS[i] for i in np.argmax(probabilities, 1)] == ["red", "green", "blue"]
    rows = seen["classification"]
    assert [row[0].split(":")[2] for row in rows] == ["red", "green", "blue"]
    for row in rows:
        scores = [float(item.split(":")[0]) for item in row]
        assert len(row) == 2 and scores == sorted(scores, reverse=True)
        assert all(LABELS[int(item.split(":")[1])] == item.split(":")[2] for item in row)


EXPECTED_BAD = {
    "raw and typed both set": ("INVALID_ARGUMENT", "both set"),
    "raw entry count differs from inputs": ("INVALID_ARGUMENT", "2 raw_input_contents entries for 1 input"),
    "raw byte size differs from shape": ("INVALID_ARGUMENT", "raw bytes; FP32 [1, 16, 16, 3] needs 3072"),
    "unknown datatype": ("INVALID_ARGUMENT", "unknown datatype 'FP99'"),
    "wrong rank": ("INVALID_ARGUMENT", "[N, 16, 16, 3]"),
    "wrong shape": ("INVALID_ARGUMENT", "[N, 16, 16, 3]"),
    "bytes with a bad length prefix": ("INVALID_ARGUMENT", "declares 255 bytes"),
    "unknown input name": ("INVALID_ARGUMENT", "unknown input 'pixels'"),
    "encoded images under image": ("INVALID_ARGUMENT", "encoded images go in as input 'images', BYTES [N]"),
    "unknown model": ("NOT_FOUND", "'nope' not found"),
    "unknown version": ("NOT_FOUND", "version 9 is not served"),
    "version not a number": ("INVALID_ARGUMENT", "positive integer"),
    "unknown output": ("INVALID_ARGUMENT", "the outputs are 'probabilities' and 'embedding'"),
}


@pytest.mark.parametrize("case", list(EXPECTED_BAD))
def test_bad_requests(seen: dict[str, Any], case: str) -> None:
    code, text = seen["bad"][case]
    assert code == EXPECTED_BAD[case][0] and EXPECTED_BAD[case][1] in text, (code, text)


def test_the_server_keeps_serving_after_bad_requests(seen: dict[str, Any]) -> None:
    assert seen["after_bad"] == "OK"


def test_http_with_tritonclient(seen: dict[str, Any]) -> None:
    http = seen["http"]
    assert http["live"] is True and http["ready"] is True and http["model_ready"] == [True, True, False]
    assert http["server_metadata"]["name"] == "tlserve"
    assert http["model_metadata"]["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, SIZE, SIZE, 3]},
        {"name": "images", "datatype": "BYTES", "shape": [-1]},
    ]
    name, probabilities = http["discovered"]
    assert name == "images" and [LABELS[i] for i in np.argmax(probabilities, 1)] == ["red", "green", "blue"]
    status, message = http["encoded_under_image"]
    assert str(status) == "400" and "encoded images go in as input 'images', BYTES [N]" in message
    grpc_answer = np.asarray(seen["fp32_raw"]["probabilities"])
    for binary in (True, False):
        np.testing.assert_allclose(np.asarray(http[f"fp32_binary_{binary}"]), grpc_answer, atol=1e-6)
    assert [LABELS[i] for i in np.asarray(http["bytes"]).argmax(1)] == ["red", "green", "blue"]
    assert [row[0].split(":")[2] for row in http["classification"]] == ["red", "green", "blue"]
    status, message = http["unknown_model"]
    assert status == "404" or status == 404, status
    assert "'nope' not found" in message


def post(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=body, method="POST")
    for key, value in headers.items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


JSON = {"Content-Type": "application/json"}
IMAGE = {"name": "image", "datatype": "FP32", "shape": [1, SIZE, SIZE, 3]}


def tensors(*inputs: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES_INPUT = {"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}


def top_k(k: Any) -> dict[str, Any]:
    return {"name": "probabilities", "parameters": {"classification": k}}


BINARY_HEADER = b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], '
BINARY_HEADER += b'"parameters": {"binary_data_size": 99}}]}'
HTTP_BAD = {
    "malformed JSON": (b"{oops", JSON, 400, "not valid JSON"),
    "wrong content type": (b"{}", {"Content-Type": "text/plain"}, 400, "Content-Type application/json"),
    "unknown datatype": (tensors({**IMAGE, "datatype": "FP99", "data": [0]}), JSON, 400, "unknown datatype"),
    "data does not fit the shape": (tensors({**IMAGE, "data": [0, 1]}), JSON, 400, "fp32_contents for shape"),
    "wrong shape": (tensors({**IMAGE, "shape": [1, 3], "data": [0, 1, 2]}), JSON, 400, "[N, 16, 16, 3]"),
    "binary size beyond the body": (
        BINARY_HEADER,
        {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(BINARY_HEADER))},
        400,
        "binary_data_size 99",
    ),
    "header length beyond the body": (b"{}", {"Inference-Header-Content-Length": "999"}, 400, "does not fit"),
    "bytes with a bad base64": (
        tensors({"name": "images", "datatype": "BYTES", "shape": [1], "data": ["%%"],
                 "parameters": {"content_type": "base64"}}),
        JSON, 400, "base64",
    ),
    "no inputs": (b"{}", JSON, 400, '"inputs" must be a list'),
    "oversized body": (b"[" + b"0," * (1 << 20) + b"0]", JSON, 413, "Too Large"),
    "JSON nested 100,000 deep": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, 400,
                                 "JSON values"),
    "JSON nested 5,000 deep": (b'{"inputs": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", JSON, 400,
                               "nested too deeply"),
    "a 400-digit integer": (tensors({**IMAGE, "data": [10**400] + [0] * (SIZE * SIZE * 3 - 1)}), JSON, 400,
                            "data must be numbers"),
    "a lone surrogate in BYTES data": (
        b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}',
        JSON, 400, "lone UTF-16 surrogate"),
    "top-k of 2**70": (json.dumps({"inputs": [BYTES_INPUT], "outputs": [top_k(2**70)]}).encode(), JSON, 400,
                       "an integer of 71 bits"),
    "top-k true": (json.dumps({"inputs": [BYTES_INPUT], "outputs": [top_k(True)]}).encode(), JSON, 400,
                   "got True"),
    "binary_data_size true": (BINARY_HEADER.replace(b"99", b"true"),
                              {HEADER_LENGTH: str(len(BINARY_HEADER) + 2)}, 400, "binary_data_size must be"),
    "header length in non-ASCII digits": (b"{}", {HEADER_LENGTH: "\u00b2"}, 400, "1 to 18 digits 0-9"),
    "a corrupt gzip body": (b"not gzip", {**JSON, "Content-Encoding": "gzip"}, 400, "cannot be read"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HTTP_BAD))
def test_http_bad_requests(server: ServerProcess, case: str) -> None:
    body, headers, status, text = HTTP_BAD[case]
    got, answer = post(server, "/v2/models/colors/infer", body, headers)
    assert got == status and text in answer["error"], answer
    valid = tensors({**IMAGE, "data": [0.0] * (SIZE * SIZE * 3)})
    got, answer = post(server, "/v2/models/nope/versions/1/infer", valid, JSON)
    assert got == 404 and "'nope' not found" in answer["error"]


@pytest.mark.parametrize(
    ("version", "text"),
    [("%C2%B2", "positive integer"), ("0", "positive integer"), ("1" * 5000, "1 to 18 digits")],
    ids=["superscript two", "zero", "5000 digits"],
)
@pytest.mark.parametrize("path", ["", "/ready"])
def test_http_versions_are_ascii_digits(server: ServerProcess, version: str, text: str, path: str) -> None:
    url = f"http://127.0.0.1:{server.http_port}/v2/models/colors/versions/{version}{path}"
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(url, timeout=10)
    assert error.value.code == 400 and text in json.loads(error.value.read())["error"]


def test_messages_match_tritonclients(triton_python: Path) -> None:
    script = """
import json
from tritonclient.grpc import service_pb2
def fields(d):
    out = {d.full_name: [[f.name, f.number, f.type, f.is_repeated] for f in d.fields]}
    for n in d.nested_types:
        out.update(fields(n))
    return out
found = {}
for m in service_pb2.DESCRIPTOR.message_types_by_name.values():
    found.update(fields(m))
service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
found["methods"] = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
print(json.dumps(found))
"""
    result = subprocess.run([str(triton_python), "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)

    def fields(d: Any) -> dict[str, list[list[Any]]]:
        out = {d.full_name: [[f.name, f.number, f.type, f.is_repeated] for f in d.fields]}
        for n in d.nested_types:
            out.update(fields(n))
        return out

    ours: dict[str, Any] = {}
    for message in grpc_predict_v2_pb2.DESCRIPTOR.message_types_by_name.values():
        ours.update(fields(message))
    for name, own in ours.items():
        assert sorted(own) == sorted(theirs[name]), name
    service = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        assert theirs["methods"][method.name] == [method.input_type.full_name, method.output_type.full_name]
