"""Server logs: JSON lines, request ids, the optional access log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc

from tests.service.conftest import ServerProcess
from tests.service.images import encoded
from tlserve.service import logs
from tlserve.service.wire.tlserve.v1 import inference_pb2, inference_pb2_grpc


def test_json_lines_with_request_ids_and_access_log(tiny_repo: Path) -> None:
    server = ServerProcess(tiny_repo, "--log-format", "json", "--access-log")
    try:
        stub = inference_pb2_grpc.InferenceStub(grpc.insecure_channel(server.target))
        with server.client() as client:
            client.wait_ready("colors")
        request = inference_pb2.ClassifyRequest(model="colors", images=[encoded("red")])
        stub.Classify(request, metadata=[("x-request-id", "trace-123")], timeout=10)
        server.wait_for("trace-123")
    finally:
        assert server.stop() == 0, server.log
    entries = [json.loads(line) for line in server.lines if line.strip()]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    [access] = [e for e in entries if e.get("request_id") == "trace-123"]
    assert access["logger"] == "tlserve.access"
    assert (
        access["message"]
        == f"native Classify model=colors version=1 code=OK {access['message'].split()[-2]} ms"
    )
    assert not [e for e in entries if "Classify" in e["message"] and "request_id" not in e]


def test_plain_format_appends_the_request_id(capsys) -> None:  # type: ignore[no-untyped-def]
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("INFO", "plain")
    token = logs.request_id.set("abc")
    try:
        logging.getLogger("tlserve.test").info("hello")
    finally:
        logs.request_id.reset(token)
        root.handlers[:], root.level = saved
    assert capsys.readouterr().err.rstrip().endswith("tlserve.test: hello [request_id=abc]")


def test_no_access_log_unless_asked(tiny_repo: Path) -> None:
    server = ServerProcess(tiny_repo)
    try:
        with server.client() as client:
            client.wait_ready("colors")
            client.classify("colors", [encoded("red")])
    finally:
        assert server.stop() == 0, server.log
    assert "code=OK" not in server.log and "stopped" in server.log
