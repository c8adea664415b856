"""Run by tests/service/test_oip.py with the interpreter of a separate virtual environment holding
tritonclient (it needs protobuf < 7): talks to a tlserve server as a Triton/KServe client would and
prints what it saw as JSON. It imports nothing from tlserve.

    python oip_client.py GRPC_TARGET IMAGES_DIR HTTP_TARGET
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as tc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

target, images_dir, http_target = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
client = tc.InferenceServerClient(target)
stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
images = [images_dir / name for name in ("red.png", "green.jpg", "blue.png")]
pixels = np.load(images_dir / "pixels.npy")  # [3, H, W, 3] float32: red, green, blue
out: dict[str, object] = {}

out["live"] = client.is_server_live()
out["ready"] = client.is_server_ready()
out["model_ready"] = [client.is_model_ready("colors"), client.is_model_ready("colors", "1"),
                      client.is_model_ready("colors", "7"), client.is_model_ready("nope")]  # fmt: skip
out["server_metadata"] = json_format.MessageToDict(client.get_server_metadata())
out["model_metadata"] = json_format.MessageToDict(client.get_model_metadata("colors"))
out["index"] = json_format.MessageToDict(client.get_model_repository_index())

# FP32, raw (what tritonclient sends)
fp32 = tc.InferInput("image", list(pixels.shape), "FP32")
fp32.set_data_from_numpy(pixels)
result = client.infer("colors", [fp32], model_version="1", request_id="r-1")
out["fp32_raw"] = {"probabilities": result.as_numpy("probabilities").tolist(), "id": result.get_response().id,
                   "version": result.get_response().model_version}  # fmt: skip

# FP32, typed contents (built with tritonclient's own protos)
request = service_pb2.ModelInferRequest(model_name="colors")
typed = request.inputs.add(name="image", datatype="FP32", shape=list(pixels.shape))
typed.contents.fp32_contents.extend(pixels.ravel().tolist())
response = stub.ModelInfer(request, timeout=10)
answer = response.outputs[0]
out["fp32_typed"] = {"values": list(answer.contents.fp32_contents), "shape": list(answer.shape),
                     "raw": len(response.raw_output_contents)}  # fmt: skip

# BYTES: encoded images
encoded = tc.InferInput("images", [len(images)], "BYTES")
encoded.set_data_from_numpy(np.array([p.read_bytes() for p in images], dtype=np.object_))
result = client.infer("colors", [encoded])
out["bytes"] = result.as_numpy("probabilities").tolist()

# a client that finds the encoded-image input in the metadata, as a generic Triton client does
found = next(t for t in client.get_model_metadata("colors").inputs if t.datatype == "BYTES")
discovered = tc.InferInput(found.name, [len(images)], "BYTES")
discovered.set_data_from_numpy(np.array([p.read_bytes() for p in images], dtype=np.object_))
out["discovered"] = [found.name, client.infer("colors", [discovered]).as_numpy("probabilities").tolist()]

# classification extension: top-2 as "score:index:label"
wanted = tc.InferRequestedOutput("probabilities", class_count=2)
result = client.infer("colors", [encoded], outputs=[wanted])
out["classification"] = [[x.decode() for x in row] for row in result.as_numpy("probabilities")]


def call(request: service_pb2.ModelInferRequest) -> list[str]:
    try:
        stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as exc:
        return [exc.code().name, exc.details()]
    return ["OK", ""]


def base(
    name: str = "image", datatype: str = "FP32", shape: tuple[int, ...] = (1, 16, 16, 3)
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="colors")
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    return request


one = pixels[:1].tobytes()
bad: dict[str, list[str]] = {}
r = base()
r.inputs[0].contents.fp32_contents.extend([1.0] * 768)
r.raw_input_contents.append(one)
bad["raw and typed both set"] = call(r)
r = base()
r.raw_input_contents.extend([one, one])
bad["raw entry count differs from inputs"] = call(r)
r = base()
r.raw_input_contents.append(one[:-4])
bad["raw byte size differs from shape"] = call(r)
r = base(datatype="FP99")
r.raw_input_contents.append(one)
bad["unknown datatype"] = call(r)
r = base(shape=(1, 16, 3))
r.raw_input_contents.append(one[: 16 * 3 * 4])
bad["wrong rank"] = call(r)
r = base(shape=(1, 8, 8, 3))
r.raw_input_contents.append(one[: 8 * 8 * 3 * 4])
bad["wrong shape"] = call(r)
r = base("images", "BYTES", (1,))
r.raw_input_contents.append(b"\xff\x00\x00\x00abc")
bad["bytes with a bad length prefix"] = call(r)
r = base("image", "BYTES", (1,))
r.inputs[0].contents.bytes_contents.append(images[0].read_bytes())
bad["encoded images under image"] = call(r)
r = base("pixels")
r.raw_input_contents.append(one)
bad["unknown input name"] = call(r)
r = base()
r.raw_input_contents.append(one)
r.model_name = "nope"
bad["unknown model"] = call(r)
r = base()
r.raw_input_contents.append(one)
r.model_version = "9"
bad["unknown version"] = call(r)
r = base()
r.raw_input_contents.append(one)
r.model_version = "v1"
bad["version not a number"] = call(r)
r = base()
r.raw_input_contents.append(one)
r.outputs.add(name="logits")
bad["unknown output"] = call(r)
out["bad"] = bad
try:
    client.infer("colors", [fp32], model_version="1")
    out["after_bad"] = "OK"
except InferenceServerException as exc:
    out["after_bad"] = str(exc)
# the same over HTTP with tritonclient.http (binary tensors by default, JSON on request)
import tritonclient.http as th  # noqa: E402

web = th.InferenceServerClient(http_target)
http: dict[str, object] = {
    "live": web.is_server_live(),
    "ready": web.is_server_ready(),
    "model_ready": [web.is_model_ready(*args) for args in (("colors",), ("colors", "1"), ("nope",))],
    "server_metadata": web.get_server_metadata(),
    "model_metadata": web.get_model_metadata("colors"),
}
for binary in (True, False):
    tensor = th.InferInput("image", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    wanted = th.InferRequestedOutput("probabilities", binary_data=binary)
    answer = web.infer("colors", [tensor], outputs=[wanted], request_id="h-1")
    http[f"fp32_binary_{binary}"] = answer.as_numpy("probabilities").tolist()
tensor = th.InferInput("images", [len(images)], "BYTES")
tensor.set_data_from_numpy(np.array([p.read_bytes() for p in images], dtype=np.object_))
http["bytes"] = web.infer("colors", [tensor]).as_numpy("probabilities").tolist()
answer = web.infer("colors", [tensor], outputs=[th.InferRequestedOutput("probabilities", class_count=2)])
http["classification"] = [[x.decode() for x in row] for row in answer.as_numpy("probabilities")]
found = next(t for t in web.get_model_metadata("colors")["inputs"] if t["datatype"] == "BYTES")
tensor = th.InferInput(found["name"], [len(images)], "BYTES")
tensor.set_data_from_numpy(np.array([p.read_bytes() for p in images], dtype=np.object_))
http["discovered"] = [found["name"], web.infer("colors", [tensor]).as_numpy("probabilities").tolist()]
misnamed = th.InferInput("image", [1], "BYTES")
misnamed.set_data_from_numpy(np.array([images[0].read_bytes()], dtype=np.object_))
try:
    web.infer("colors", [misnamed])
except InferenceServerException as exc:
    http["encoded_under_image"] = [exc.status(), exc.message()]
try:
    web.infer("nope", [tensor])
except InferenceServerException as exc:
    http["unknown_model"] = [exc.status(), exc.message()]
out["http"] = http
print(json.dumps(out))
