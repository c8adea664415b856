"""TensorFlow Serving's REST API on the HTTP port, and the README's curl examples."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.service.conftest import ServerProcess
from tests.service.images import encoded, solid
from tests.service.tiny import LABELS, SIZE
from tlserve.service.client import Client

ROOT = Path(__file__).resolve().parents[2]


def http(
    server: ServerProcess,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=data, method=method,
                                     headers=headers or {})  # fmt: skip
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def pixels(*colors: str) -> list[Any]:
    return [solid(c, SIZE).tolist() for c in colors]


def b64(color: str, fmt: str = "PNG") -> dict[str, str]:
    return {"b64": base64.b64encode(encoded(color, fmt)).decode()}


def labels(rows: list[list[float]]) -> list[str]:
    return [LABELS[int(np.argmax(row))] for row in rows]


def test_predict_row_and_columnar(server: ServerProcess) -> None:
    status, body = http(server, "POST", "/v1/models/colors:predict", {"instances": pixels("red", "blue")})
    assert status == 200 and labels(body["predictions"]) == ["red", "blue"]
    status, body = http(
        server, "POST", "/v1/models/colors/versions/1:predict", {"inputs": {"image": pixels("green")}}
    )
    assert status == 200 and labels(body["outputs"]) == ["green"]
    status, body = http(
        server, "POST", "/v1/models/colors:predict", {"instances": [{"image": pixels("red")[0]}]}
    )
    assert status == 200 and labels(body["predictions"]) == ["red"]


def test_predict_images_as_b64(server: ServerProcess) -> None:
    request = {"signature_name": "predict_images", "instances": [b64("red"), b64("green", "JPEG")]}
    status, body = http(server, "POST", "/v1/models/colors:predict", request)
    assert status == 200 and labels(body["predictions"]) == ["red", "green"]
    request = {"signature_name": "predict_images", "inputs": {"images": [b64("blue")]}}
    status, body = http(server, "POST", "/v1/models/colors:predict", request)
    assert status == 200 and labels(body["outputs"]) == ["blue"]


def test_status_and_metadata(server: ServerProcess) -> None:
    status, body = http(server, "GET", "/v1/models/colors")
    assert status == 200
    ok = {"error_code": "OK", "error_message": ""}
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]}
    status, body = http(server, "GET", "/v1/models/colors/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "predict_images", "classify"}
    image = defs["serving_default"]["inputs"]["image"]  # every field, as TF Serving writes them
    dims = [{"size": str(d), "name": ""} for d in (-1, SIZE, SIZE, 3)]
    shape = {"dim": dims, "unknown_rank": False}
    assert image == {"name": "serving_default_image:0", "dtype": "DT_FLOAT", "tensor_shape": shape}


def test_status_and_metadata_by_version_label(server: ServerProcess) -> None:
    """As TF Serving: /labels/LABEL wherever /versions/N goes."""
    assert http(server, "GET", "/v1/models/colors/labels/stable") == http(server, "GET", "/v1/models/colors")
    by_label = http(server, "GET", "/v1/models/colors/labels/stable/metadata")
    assert by_label == http(server, "GET", "/v1/models/colors/versions/1/metadata") and by_label[0] == 200
    status, body = http(server, "GET", "/v1/models/colors/labels/beta")
    assert status == 404 and "no version label 'beta' (labels: stable)" in body["error"]
    status, body = http(server, "GET", "/v1/models/colors/labels/beta/metadata")
    assert status == 404 and "no version label 'beta'" in body["error"]


BAD = [
    ("POST", "/v1/models/nope:predict", {"instances": []}, 404, "'nope' not found"),
    ("POST", "/v1/models/colors/versions/7:predict", {"instances": pixels("red")}, 404, "version 7"),
    ("POST", "/v1/models/colors:predict", {}, 400, 'exactly one of "instances"'),
    ("POST", "/v1/models/colors:predict", {"instances": [], "inputs": []}, 400, 'exactly one of "instances"'),
    ("POST", "/v1/models/colors:predict", {"instances": []}, 400, "[N, 16, 16, 3]"),
    ("POST", "/v1/models/colors:predict", {"instances": [[1, 2], [3]]}, 400, "nested lists of numbers"),
    ("POST", "/v1/models/colors:predict", {"signature_name": "x", "instances": []}, 400, "signature 'x'"),
    ("POST", "/v1/models/colors:predict", {"signature_name": "predict_images", "instances": [{"b64": "%%"}]},
     400, "not valid base64"),
    ("POST", "/v1/models/colors:predict", {"signature_name": "predict_images", "instances": ["raw"]},
     400, '{"b64": "..."}'),
    ("GET", "/v1/models/colors/versions/9", None, 404, "no version 9"),
    ("GET", "/v1/models/colors/versions/" + "1" * 5000, None, 400, "1 to 18 digits"),
    ("POST", f"/v1/models/colors/versions/{'1' * 5000}:predict", {"instances": []}, 400, "1 to 18 digits"),
    ("POST", "/v1/models/colors:predict", {"signature_name": ["predict_images"], "instances": []}, 400,
     '"signature_name" must be a string; got list'),
    ("POST", "/v1/models/colors:predict", {"signature_name": {"a": 1}, "instances": []}, 400,
     '"signature_name" must be a string; got dict'),
    ("GET", "/v2/nothing/here", None, 404, "Not Found"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "text"), BAD)
def test_bad_requests(
    server: ServerProcess, method: str, path: str, body: Any, status: int, text: str
) -> None:
    got, answer = http(server, method, path, body)
    assert got == status and text in answer["error"], answer
    assert http(server, "POST", "/v1/models/colors:predict", {"instances": pixels("red")})[0] == 200


def test_malformed_json_wrong_type_and_oversized(server: ServerProcess) -> None:
    status, answer = http(server, "POST", "/v1/models/colors:predict", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    status, answer = http(server, "POST", "/v1/models/colors:predict", raw=b"x", content_type="text/plain")
    assert status == 400 and "Content-Type application/json" in answer["error"]
    status, answer = http(server, "POST", "/v1/models/colors:predict", raw=b"[" + b"0," * (1 << 20) + b"0]")
    assert status == 413, answer  # the fixture's server takes 1 MiB bodies at most


HOSTILE_BODIES = {
    "JSON nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, {}, "JSON values"),
    "JSON nested 5,000 deep (fewer values than the limit)": (b"[" * 5_000 + b"]" * 5_000, {},
                                                             "nested too deeply"),
    "a 400-digit integer pixel": (json.dumps({"instances": [[[[10**400, 0, 0]] * SIZE] * SIZE]}).encode(), {},
                                  "nested lists of numbers"),
    "a lone surrogate in a string": (b'{"signature_name": "predict_images", "instances": ["\\ud800"]}', {},
                                     "lone UTF-16 surrogate"),
    "a corrupt gzip body": (b"not gzip at all", {"Content-Encoding": "gzip"}, "cannot be read"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
def test_hostile_bodies_are_invalid_argument_without_a_traceback(server: ServerProcess, case: str) -> None:
    body, headers, text = HOSTILE_BODIES[case]
    before = len(server.lines)
    status, answer = http(server, "POST", "/v1/models/colors:predict", raw=body, headers=headers)
    assert status == 400 and text in answer["error"], answer
    assert http(server, "POST", "/v1/models/colors:predict", {"instances": pixels("red")})[0] == 200
    assert not [line for line in server.lines[before:] if "Traceback" in line or " ERROR " in line]


def raw_http(server: ServerProcess, data: bytes) -> bytes:
    """Send bytes to the REST port as they are; the first bytes of the answer."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(4096)


REQUEST_LINE = b"POST /v1/models/colors:predict HTTP/1.1\r\nHost: localhost\r\n"
MALFORMED_HTTP = {
    "bad Content-Length": (REQUEST_LINE + b"Content-Length: abc\r\n\r\n", "Invalid character in Content-"),
    "Content-Length and chunked": (
        REQUEST_LINE + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding can't be present with Content-Length"),
    "too many headers": (REQUEST_LINE + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
                         "Too many headers"),
    "HTTP/2 preface of a gRPC client": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2 (a gRPC client?)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MALFORMED_HTTP))
def test_malformed_http_is_400_and_one_warning_line(server: ServerProcess, case: str) -> None:
    data, logged = MALFORMED_HTTP[case]
    before = len(server.lines)
    assert raw_http(server, data).startswith(b"HTTP/1.0 400 Bad Request\r\n")
    server.wait_for(logged)
    new = server.lines[before:]
    assert [line for line in new if logged in line and " WARNING aiohttp.server: " in line], new
    assert not [line for line in new if "Traceback" in line or " ERROR " in line], new


def test_a_grpc_client_on_the_rest_port_is_told_where_grpc_is(server: ServerProcess) -> None:
    """The raw HTTP/2 preface, then a real gRPC client: one WARNING line each naming both ports'
    roles, no traceback."""
    said = (f"HTTP/2 (a gRPC client?) on the REST port, which speaks HTTP/1.1; gRPC is on port "
            f"{server.grpc_port} (a client error)")  # fmt: skip
    before = len(server.lines)
    assert raw_http(server, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    server.wait_for(said)
    with Client(f"127.0.0.1:{server.http_port}", timeout_s=5) as client, pytest.raises(grpc.RpcError):
        client.classify("colors", [encoded("red")])
    deadline = time.monotonic() + 10  # NOTE: a wait for the server's log, not a timed assertion
    while sum(said in line for line in server.lines[before:]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    new = server.lines[before:]
    warned = [line for line in new if said in line]
    assert len(warned) >= 2 and all(" WARNING aiohttp.server: " in line for line in warned), new
    assert not [line for line in new if "Traceback" in line or " ERROR " in line], new


def requests_counted(server: ServerProcess, code: str) -> float:
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read()
    pattern = rf'tlserve_requests_total{{api="rest",code="{code}",method="predict",[^}}]*}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, metrics.decode()))


def test_a_client_gone_mid_body_is_counted_as_cancelled(server: ServerProcess) -> None:
    before, cancelled = len(server.lines), requests_counted(server, "CANCELLED")
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(REQUEST_LINE + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inst')
    deadline = time.monotonic() + 10  # NOTE: a wait for the server to notice, not a timed assertion
    while requests_counted(server, "CANCELLED") == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests_counted(server, "CANCELLED") == cancelled + 1
    assert not [line for line in server.lines[before:] if "Traceback" in line or " ERROR " in line]


def test_the_readme_curl_examples(server: ServerProcess, tmp_path: Path) -> None:
    """The README's curl lines as written, with only the address, model and image path swapped."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- rest-examples -->")[1].split("```console")[1].split("```")[0]
    commands = re.sub(r"\\\n\s*", "", block).splitlines()
    commands = [c.removeprefix("$ ") for c in commands if c.startswith("$ curl")]
    assert len(commands) == 3
    image = tmp_path / "red.png"
    image.write_bytes(encoded("red"))
    outputs = []
    for command in commands:
        command = command.replace("localhost:8501", f"127.0.0.1:{server.http_port}").replace(
            "digits", "colors"
        )
        command = re.sub(r"demo-output/data/target_val/digit_\d/0000\.png", str(image), command)
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(result.stdout))
    assert outputs[0]["model_version_status"][0]["state"] == "AVAILABLE"
    assert "serving_default" in outputs[1]["metadata"]["signature_def"]["signature_def"]
    assert labels(outputs[2]["predictions"]) == ["red"]
