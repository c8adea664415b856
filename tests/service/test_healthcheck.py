"""The image's HEALTHCHECK probes the port the server really bound: the server writes its ports to
``TLSERVE_PORTS_FILE`` and ``python -m tlserve.service.healthcheck`` reads them (Dockerfile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.service.conftest import ServerProcess


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TLSERVE_")}
    return subprocess.run([sys.executable, "-m", "tlserve.service.healthcheck", *args],
                          capture_output=True, text=True, env={**environment, **env}, timeout=60)  # fmt: skip


def test_the_healthcheck_follows_the_port_the_server_bound(tiny_repo: Path, tmp_path: Path) -> None:
    ports_file = tmp_path / "run" / "ports.json"
    ports_file.parent.mkdir()
    env = {"TLSERVE_PORTS_FILE": str(ports_file)}
    server = ServerProcess(tiny_repo, env=env)  # --grpc-port 0: a port no default names
    try:
        with server.client() as client:
            client.wait_ready("colors")
        written = json.loads(ports_file.read_text())
        assert written["grpc"] == server.grpc_port and written["http"] == server.http_port
        assert written["metrics"] == server.metrics_port and written["health"] is None
        assert written["pid"] == server.proc.pid
        health = probe(env)
        assert health.returncode == 0 and health.stdout.strip() == "SERVING", health.stderr
        assert probe(env, "--service", "colors").stdout.strip() == "SERVING"
        assert list(ports_file.parent.iterdir()) == [ports_file]  # no partial file left behind
    finally:
        assert server.stop() == 0, server.log
    assert not ports_file.exists()  # removed at a clean stop
    # now the settings' port: the one the server had, where nothing answers any more
    gone = probe({**env, "TLSERVE_GRPC_PORT": str(server.grpc_port)}, "--timeout-s", "1")
    assert gone.returncode == 1


def test_the_health_only_port_is_preferred(tiny_repo: Path, tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    env = {"TLSERVE_PORTS_FILE": str(ports_file)}
    server = ServerProcess(tiny_repo, "--health-port", "0", env=env)
    try:
        with server.client() as client:
            client.wait_ready("colors")
        assert json.loads(ports_file.read_text())["health"] == server.health_port != server.grpc_port
        health = probe(env)
        assert health.returncode == 0 and health.stdout.strip() == "SERVING", health.stderr
    finally:
        assert server.stop() == 0, server.log


def test_an_unwritable_ports_file_is_a_warning_not_a_failure(tiny_repo: Path, tmp_path: Path) -> None:
    ports_file = tmp_path / "missing-dir" / "ports.json"
    server = ServerProcess(tiny_repo, env={"TLSERVE_PORTS_FILE": str(ports_file)})
    try:
        with server.client() as client:
            client.wait_ready("colors")
            assert client.health("colors") == "SERVING"
    finally:
        assert server.stop() == 0, server.log
    assert f"cannot write the ports file {ports_file}" in server.log


def test_a_broken_ports_file_is_unhealthy_in_one_line(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    ports_file.write_text("{not json")
    broken = probe({"TLSERVE_PORTS_FILE": str(ports_file)})
    assert broken.returncode == 1
    assert broken.stderr.startswith(f"unhealthy: ports file {ports_file} is not JSON")
    assert len(broken.stderr.strip().splitlines()) == 1
    ports_file.write_text(json.dumps({"http": 8501}))
    missing = probe({"TLSERVE_PORTS_FILE": str(ports_file)})
    assert missing.returncode == 1 and "names no gRPC port" in missing.stderr


def test_an_empty_ports_file_setting_is_none() -> None:
    # NOTE: `docker run -e TLSERVE_PORTS_FILE= IMAGE` undoes the image's setting
    from tlserve.service.settings import ServerSettings

    assert ServerSettings(ports_file="").ports_file is None
    assert ServerSettings(ports_file="off").ports_file is None
    assert str(ServerSettings(ports_file="/tmp/p.json").ports_file) == "/tmp/p.json"
