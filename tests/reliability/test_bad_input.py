"""Hostile and malformed input, one case per row: the exact status, then proof the server still
answers. The server here requires a bearer token, so every case also runs past authentication; the
TLS cases use a second server with mutual TLS.

Requests are built with tlserve's own wire code (what any TF Serving / OIP client sends on the wire),
so a case can set what a well-behaved client library would refuse to (reserved dtypes, both content
kinds, shapes that overflow).
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.reliability.conftest import RELIABILITY_DIR, write_record
from tests.reliability.load import jpeg, png
from tests.service.bombs import gif_bomb, gif_frame_bomb, jpeg_scan_bomb, png_bomb
from tests.service.certs import Certs, make_certs
from tests.service.conftest import ServerProcess
from tests.service.tiny import SIZE, publish
from tlserve import repository as repo
from tlserve.service import messages
from tlserve.service.client import Client, Tls, channel
from tlserve.service.messages import CLASSIFY, MODEL_INFER, PREDICT
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb2
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from tlserve.service.wire.tfs import serving_pb2, serving_pb2_grpc
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb
from tlserve.service.wire.tlserve.v1 import inference_pb2, inference_pb2_grpc

TOKEN = "reliability-suite-token-0123456789"
MAX_BATCH = 8
MAX_MESSAGE = 2 << 20
MAX_IMAGE_BYTES = 512 << 10
S = grpc.StatusCode
OUTCOMES: list[dict[str, Any]] = []


@dataclass
class Stubs:
    tfs: serving_pb2_grpc.PredictionServiceStub
    native: inference_pb2_grpc.InferenceStub
    oip: oip_grpc.GRPCInferenceServiceStub
    metadata: list[tuple[str, str]]
    channel: grpc.Channel


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("models")
    publish(repository, "colors", 1)
    env = {"TLSERVE_AUTH_TOKENS": TOKEN, "TLSERVE_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
           "TLSERVE_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES)}  # fmt: skip
    process = ServerProcess(repository, "--max-batch-size", str(MAX_BATCH), env=env, token=TOKEN)
    process.wait_ready("colors")
    yield process
    assert process.stop() == 0, process.log
    if RELIABILITY_DIR:
        write_record("bad-input", {"cases": len(OUTCOMES), "outcomes": OUTCOMES})


@pytest.fixture(scope="module")
def stubs(server: ServerProcess) -> Iterator[Stubs]:
    to_server = channel(server.target)
    yield Stubs(serving_pb2_grpc.PredictionServiceStub(to_server), inference_pb2_grpc.InferenceStub(to_server),
                oip_grpc.GRPCInferenceServiceStub(to_server), [("authorization", f"Bearer {TOKEN}")], to_server)  # fmt: skip
    to_server.close()


# --- request builders: the good requests of bench.messages, edited ------------------------------
def pixels(n: int = 1, value: float = 100.0) -> np.ndarray:
    return np.full((n, SIZE, SIZE, 3), value, np.float32)


def predict(
    array: np.ndarray | None = None, model: str = "colors", signature: str = "", name: str = repo.INPUT_NAME
) -> serving_pb2.PredictRequest:
    """Predict ``array`` as input ``name`` through ``signature`` ("" the default); None: no input."""
    request = messages.predict_request(model)
    request.model_spec.signature_name = signature
    if array is not None:
        request.inputs[name].CopyFrom(messages.float_tensor(array))
    return request


def with_tensor(edit: Callable[[tf_pb.TensorProto], None], array: np.ndarray | None = None) -> Any:
    request = predict(pixels() if array is None else array)
    edit(request.inputs[repo.INPUT_NAME])
    return request


def with_shape(shape: list[int], values: int = 1) -> serving_pb2.PredictRequest:
    def edit(tensor: tf_pb.TensorProto) -> None:
        del tensor.tensor_shape.dim[:]
        tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in shape)
        tensor.tensor_content = b""
        tensor.float_val.extend([1.0] * values)

    return with_tensor(edit)


def images_request(images: list[bytes]) -> serving_pb2.PredictRequest:
    return messages.predict_request("colors", images=images)


def classify(images: list[bytes], model: str = "colors", top_k: int = 1) -> inference_pb2.ClassifyRequest:
    return messages.classify_request(model, images, top_k=top_k)


def infer(datatype: str = "FP32", shape: list[int] | None = None, raw: bytes | None = None,
          typed: list[float] | None = None, version: str = "") -> oip_pb2.ModelInferRequest:  # fmt: skip
    request = oip_pb2.ModelInferRequest(model_name="colors", model_version=version)
    entry = request.inputs.add(name=repo.INPUT_NAME, datatype=datatype, shape=shape or [1, SIZE, SIZE, 3])
    if typed is not None:
        entry.contents.fp32_contents.extend(typed)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def image(fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (SIZE, SIZE), 128).save(buffer, fmt)
    return buffer.getvalue()


def output_filter(names: list[str]) -> serving_pb2.PredictRequest:
    request = predict(pixels())
    request.output_filter.extend(names)
    return request


def versioned(version: int = 0, label: str = "") -> serving_pb2.PredictRequest:
    request = predict(pixels())
    if version:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    return request


def extra_input() -> serving_pb2.PredictRequest:
    request = predict(pixels())
    request.inputs["extra"].CopyFrom(request.inputs[repo.INPUT_NAME])
    return request


def set_attr(**values: Any) -> Callable[[tf_pb.TensorProto], None]:
    def edit(tensor: tf_pb.TensorProto) -> None:
        for key, value in values.items():
            if isinstance(value, list):
                getattr(tensor, key).extend(value)
            else:
                setattr(tensor, key, value)

    return edit


RAW = np.ascontiguousarray(pixels()).tobytes()
PNG, JPEG = png(), jpeg()

# name -> (call(stubs) -> response, expected status, text in the details)
Case = tuple[Callable[[Stubs], Any], grpc.StatusCode, str]


def tfs(request: Any) -> Callable[[Stubs], Any]:
    return lambda s: s.tfs.Predict(request, timeout=10, metadata=s.metadata)


def native(request: Any, metadata: list[tuple[str, str]] | None = None) -> Callable[[Stubs], Any]:
    return lambda s: s.native.Classify(
        request, timeout=10, metadata=s.metadata if metadata is None else metadata
    )


def oip(request: Any) -> Callable[[Stubs], Any]:
    return lambda s: s.oip.ModelInfer(request, timeout=10, metadata=s.metadata)


def wire(method: str, data: bytes) -> Callable[[Stubs], Any]:
    """``data`` sent as the request message of ``method`` as it is, whatever it holds."""
    return lambda s: s.channel.unary_unary(method)(data, timeout=10, metadata=s.metadata)


CASES: dict[str, Case] = {
    # tensors (TF Serving Predict)
    "unknown dtype (enum value 99)": (tfs(with_tensor(set_attr(dtype=99))), S.INVALID_ARGUMENT, "dtype"),
    "reserved dtype DT_INVALID": (tfs(with_tensor(set_attr(dtype=tf_pb.DT_INVALID))), S.INVALID_ARGUMENT, "DT_INVALID"),
    "dtype mismatch (int32 for float32)": (
        tfs(with_tensor(set_attr(dtype=tf_pb.DT_INT32))), S.INVALID_ARGUMENT, "int32"),
    "negative dimension": (tfs(with_shape([1, -16, SIZE, 3])), S.INVALID_ARGUMENT, "negative"),
    "unknown rank": (tfs(with_tensor(lambda t: setattr(t.tensor_shape, "unknown_rank", True))),
                     S.INVALID_ARGUMENT, "rank"),
    "shape product overflowing int64": (
        tfs(with_shape([1 << 31, 1 << 31, 1 << 31, 3])), S.INVALID_ARGUMENT, "above the limit"),
    "zero batch hiding a huge shape": (tfs(with_shape([0, 106, 106, 10443503, 19650419], values=0)), S.INVALID_ARGUMENT, "above the limit"),
    "huge declared shape with one value": (
        tfs(with_shape([1 << 20, SIZE, SIZE, 3])), S.INVALID_ARGUMENT, "above the limit"),
    "tensor_content length mismatch": (
        tfs(with_tensor(set_attr(tensor_content=RAW[:-4]))), S.INVALID_ARGUMENT, "bytes"),
    "tensor_content and float_val both set": (
        tfs(with_tensor(set_attr(float_val=[1.0]))), S.INVALID_ARGUMENT, "both"),
    "extra input": (tfs(extra_input()), S.INVALID_ARGUMENT, "extra"),
    "missing input": (tfs(predict()), S.INVALID_ARGUMENT, repo.INPUT_NAME),
    "wrong input name": (tfs(predict(pixels(), name="pixels")), S.INVALID_ARGUMENT, "pixels"),
    "unknown signature": (tfs(predict(pixels(), signature="nope")), S.INVALID_ARGUMENT, "signature 'nope'"),
    "duplicate output filter": (
        tfs(output_filter([repo.OUTPUT_NAME] * 2)), S.INVALID_ARGUMENT, "output_filter"),
    "unknown output in filter": (tfs(output_filter(["logits"])), S.INVALID_ARGUMENT, "output_filter"),
    "NaN pixels": (tfs(predict(pixels(value=np.nan))), S.INVALID_ARGUMENT, "finite"),
    "Inf pixels": (tfs(predict(pixels(value=np.inf))), S.INVALID_ARGUMENT, "finite"),
    "batch of 0": (tfs(predict(pixels(0))), S.INVALID_ARGUMENT, "empty batch"),
    "batch above the maximum": (tfs(predict(pixels(MAX_BATCH + 1))), S.INVALID_ARGUMENT, "maximum"),
    "unknown version": (tfs(versioned(version=7)), S.NOT_FOUND, "version 7"),
    "unknown version label": (tfs(versioned(label="canary")), S.NOT_FOUND, "canary"),
    # model names
    "path traversal in the model name": (tfs(predict(pixels(), model="../colors")), S.INVALID_ARGUMENT,
                                         "not allowed"),
    "absolute path as the model name": (native(classify([PNG], model="/etc/passwd")), S.INVALID_ARGUMENT,
                                        "not allowed"),
    "10 KB model name": (native(classify([PNG], model="a" * 10_000)), S.INVALID_ARGUMENT, "too long"),
    "unknown model": (native(classify([PNG], model="nope")), S.NOT_FOUND, "'nope' not found"),
    # encoded images (native Classify and TF Serving predict_images)
    "empty image": (native(classify([b""])), S.INVALID_ARGUMENT, "empty image"),
    "junk bytes as an image": (native(classify([b"not an image at all"])), S.INVALID_ARGUMENT,
                               "not a JPEG, PNG, BMP or GIF"),
    "truncated PNG": (native(classify([PNG[: len(PNG) // 2]])), S.INVALID_ARGUMENT, "cannot decode"),
    "truncated JPEG": (native(classify([JPEG[: len(JPEG) // 2]])), S.INVALID_ARGUMENT, "cannot decode"),
    "PNG bomb, 400 megapixels in 389 KB": (native(classify([png_bomb(20000, 20000)])), S.INVALID_ARGUMENT,
                                           "decompression bomb"),
    "PNG bomb over max_image_pixels": (native(classify([png_bomb(7000, 6000)])), S.INVALID_ARGUMENT,
                                       "max_image_pixels"),
    "images over the request pixel budget": (
        tfs(images_request([png_bomb(6000, 6000)] * 3)), S.INVALID_ARGUMENT, "max_request_pixels"),
    "image over max_image_bytes": (native(classify([PNG + b"\0" * MAX_IMAGE_BYTES])), S.INVALID_ARGUMENT,
                                   "max_image_bytes"),
    "1-bit BMP (TensorFlow cannot read it)": (native(classify([image("BMP", "1")])), S.INVALID_ARGUMENT,
                                             "unsupported BMP"),
    "GIF bomb, a later frame of 30000x30000": (native(classify([gif_bomb((1, 1), (30000, 30000))])),
                                               S.INVALID_ARGUMENT, "max_image_pixels"),
    "GIF of 30,000 one-pixel frames in 439 KB": (native(classify([gif_frame_bomb(30_000)])), S.INVALID_ARGUMENT,
                                                 "max_gif_frames"),
    "TIFF (format not served)": (native(classify([image("TIFF")])), S.INVALID_ARGUMENT,
                                 "not a JPEG, PNG, BMP or GIF"),
    "bad image among good ones, by index": (
        tfs(images_request([PNG, JPEG, b"junk"])), S.INVALID_ARGUMENT, "image 2"),
    "no images": (native(classify([])), S.INVALID_ARGUMENT, "empty batch"),
    "images above the maximum batch": (native(classify([PNG] * (MAX_BATCH + 1))), S.INVALID_ARGUMENT, "maximum"),
    "negative top_k": (native(classify([PNG], top_k=-1)), S.INVALID_ARGUMENT, "top_k"),
    "progressive JPEG scan bomb, 5,000 scans in 55 KB": (native(classify([jpeg_scan_bomb(5000)])),
                                                         S.INVALID_ARGUMENT, "max_jpeg_scans"),
    # OIP ModelInfer
    "OIP unknown datatype": (oip(infer("FP99", raw=RAW)), S.INVALID_ARGUMENT, "FP99"),
    "OIP raw length does not match the shape": (oip(infer(raw=RAW[:-8])), S.INVALID_ARGUMENT, "bytes"),
    "OIP raw and typed contents both set": (oip(infer(raw=RAW, typed=[1.0])), S.INVALID_ARGUMENT, "both"),
    "OIP negative dimension": (oip(infer(shape=[1, -SIZE, SIZE, 3], raw=RAW)), S.INVALID_ARGUMENT, "invalid shape"),
    "OIP version '²' (str.isdigit accepts it, int refuses it)": (oip(infer(raw=RAW, version="²")),
                                                                 S.INVALID_ARGUMENT, "positive integer"),
    "OIP version of 5,000 digits": (oip(infer(raw=RAW, version="1" * 5000)), S.INVALID_ARGUMENT, "1 to 18 digits"),
    # protobuf that does not parse (grpcio alone would answer UNKNOWN, uncounted)
    "garbage bytes as a Classify request": (wire(CLASSIFY, b"\xff\xff\xff"), S.INVALID_ARGUMENT, "not a valid protobuf"),
    "garbage bytes as a Predict request": (wire(PREDICT, b"\x0a\xff"), S.INVALID_ARGUMENT, "not a valid protobuf"),
    "garbage bytes as a ModelInfer request": (wire(MODEL_INFER, b"\x08"), S.INVALID_ARGUMENT, "not a valid protobuf"),
    "invalid UTF-8 in a string field (model name)": (wire(CLASSIFY, b"\x0a\x02\xff\xfe"), S.INVALID_ARGUMENT,
                                                     "bad UTF-8"),
    # transport and authentication
    "message above max_message_bytes": (
        native(classify([b"x" * (MAX_MESSAGE + 1024)])), S.RESOURCE_EXHAUSTED, "larger than max"),
    "32 KB of metadata (above max_metadata_bytes)": (
        native(classify([PNG]), [("authorization", f"Bearer {TOKEN}"), ("x-junk", "j" * (32 << 10))]),
        S.RESOURCE_EXHAUSTED, ""),
    "missing token": (native(classify([PNG]), []), S.UNAUTHENTICATED, "bearer token"),
    "wrong token": (native(classify([PNG]), [("authorization", f"Bearer {TOKEN[:-1]}x")]), S.UNAUTHENTICATED,
                    "bearer token"),
    "token with the wrong scheme": (native(classify([PNG]), [("authorization", f"Basic {TOKEN}")]),
                                    S.UNAUTHENTICATED, "bearer token"),
}  # fmt: skip


def _still_serving(stubs: Stubs) -> None:
    response = stubs.native.Classify(classify([PNG]), timeout=10, metadata=stubs.metadata)
    assert response.predictions[0].labels[0].label == "red"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(stubs: Stubs, case: str) -> None:
    call, code, text = CASES[case]
    start = time.perf_counter()
    with pytest.raises(grpc.RpcError) as error:
        call(stubs)
    elapsed_ms = (time.perf_counter() - start) * 1000
    got = error.value.code()
    OUTCOMES.append({"case": case, "expected": code.name, "got": got.name, "ms": round(elapsed_ms, 1),
                     "details": (error.value.details() or "")[:160]})  # fmt: skip
    assert got == code, error.value.details()
    assert text in (error.value.details() or ""), error.value.details()
    _still_serving(stubs)


def test_bad_input_covers_at_least_30_cases() -> None:
    assert len(CASES) >= 30


# --- REST (same rules on the HTTP port) -----------------------------------------------------------
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("case", "body", "headers", "status"),
    [
        ("no token", b"{}", {}, 401),
        ("invalid JSON", b"{not json", {"Authorization": f"Bearer {TOKEN}"}, 400),
        ("instances of the wrong shape", json.dumps({"instances": [[1, 2, 3]]}).encode(),
         {"Authorization": f"Bearer {TOKEN}"}, 400),
        ("signature_name as a list", b'{"signature_name": ["predict_images"], "instances": []}', AUTH, 400),
        ("signature_name as an object", b'{"signature_name": {}, "instances": []}', AUTH, 400),
        ("JSON nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, AUTH, 400),
        ("a 400-digit integer pixel", b'{"instances": [[[[1' + b"0" * 400 + b', 0, 0]]]]}', AUTH, 400),
        ("a lone surrogate in a string", b'{"signature_name": "predict_images", "instances": ["\\ud800"]}', AUTH,
         400),
        ("a corrupt gzip body", b"not gzip", {**AUTH, "Content-Encoding": "gzip"}, 400),
    ],
)  # fmt: skip
def test_bad_rest_input(server: ServerProcess, stubs: Stubs, case: str, body: bytes, headers: dict[str, str],
                        status: int) -> None:  # fmt: skip
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v1/models/colors:predict", data=body,
                                     headers={"Content-Type": "application/json", **headers})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    OUTCOMES.append({"case": f"REST {case}", "expected": str(status), "got": str(error.value.code), "ms": None,
                     "details": error.value.read()[:160].decode()})  # fmt: skip
    assert error.value.code == status
    _still_serving(stubs)


@pytest.mark.parametrize(("width", "height"), [(250_000, 1), (1, 250_000)])
def test_images_of_extreme_aspect_ratios_are_served(stubs: Stubs, width: int, height: int) -> None:
    """A PNG of 250,000 x 1 pixels is well-formed and within max_image_pixels: it is classified, and
    resized in memory of the model's input size (tests/service/test_images.py bounds the resize)."""
    data = png_bomb(width, height)
    start = time.perf_counter()
    response = stubs.native.Classify(classify([data]), timeout=10, metadata=stubs.metadata)
    OUTCOMES.append({"case": f"{width}x{height} PNG of {len(data)} bytes (served)", "expected": "OK",
                     "got": "OK", "ms": round((time.perf_counter() - start) * 1000, 1), "details": ""})  # fmt: skip
    assert len(response.predictions) == 1 and len(response.predictions[0].labels) == 1


# --- TLS ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("tls-models")
    publish(repository, "colors", 1)
    tls = Tls.from_files(certs.ca, certs.client.cert, certs.client.key)
    process = ServerProcess(repository, "--tls-cert-file", str(certs.server.cert), "--tls-key-file",
                            str(certs.server.key), "--tls-client-ca-file", str(certs.ca), tls=tls)  # fmt: skip
    process.wait_ready("colors")
    yield process
    assert process.stop() == 0, process.log


def _tls_cases(certs: Certs) -> dict[str, Tls | None]:
    return {
        "plaintext client on the TLS port": None,
        "TLS client without a client certificate (mTLS)": Tls.from_files(certs.ca),
        "client certificate from an untrusted CA": Tls.from_files(certs.ca, certs.rogue_client.cert,
                                                                  certs.rogue_client.key),
        "server certificate not trusted by the client": Tls.from_files(certs.rogue_ca, certs.client.cert,
                                                                       certs.client.key),
    }  # fmt: skip


@pytest.mark.parametrize("case", ["plaintext client on the TLS port", "TLS client without a client certificate (mTLS)",
                                  "client certificate from an untrusted CA",
                                  "server certificate not trusted by the client"])  # fmt: skip
def test_bad_tls_clients_are_refused(tls_server: ServerProcess, certs: Certs, case: str) -> None:
    tls = _tls_cases(certs)[case]
    start = time.perf_counter()
    with Client(tls_server.target, timeout_s=5, tls=tls) as client, pytest.raises(grpc.RpcError) as error:
        client.classify("colors", [PNG])
    OUTCOMES.append({"case": case, "expected": "UNAVAILABLE", "got": error.value.code().name,
                     "ms": round((time.perf_counter() - start) * 1000, 1), "details": error.value.details()[:160]})  # fmt: skip
    assert error.value.code() == S.UNAVAILABLE
    with tls_server.client() as client:  # the right client still gets in
        assert client.classify("colors", [PNG]).predictions[0][0].label == "red"
