"""`tlserve serve` refusing to start: one line that names the setting or flag to change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import ServerProcess
from tests.test_cli import assert_usage_error


@pytest.mark.parametrize(("flag", "what"), [("--grpc-port", "gRPC"), ("--http-port", "REST")])
def test_a_port_in_use_names_the_port_and_the_flag(
    server: ServerProcess, tiny_repo: Path, flag: str, what: str
) -> None:
    ports = {"--grpc-port": "0", "--http-port": "0", "--metrics-port": "0", flag: str(server.grpc_port)}
    result = subprocess.run(
        [sys.executable, "-m", "tlserve", "serve", "--repository", str(tiny_repo), "--host", "127.0.0.1",
         *[x for pair in ports.items() for x in pair]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = f"tlserve serve: error: cannot bind {what} to 127.0.0.1:{server.grpc_port}:"
    errors = [x for x in result.stderr.splitlines() if x.startswith("tlserve serve:")]
    assert len(errors) == 1 and errors[0].startswith(line), result.stderr
    assert f"choose another port with {flag} (0 picks a free one)" in errors[0]
    assert "GRPC_VERBOSITY" not in result.stderr


def test_a_misspelt_model_setting_is_refused_from_the_environment_as_from_a_file(
    capsys: pytest.CaptureFixture[str], tiny_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["serve", "--repository", str(tiny_repo)]
    config = tmp_path / "tlserve.toml"
    config.write_text('[models.colors]\nbakend = "tensorflow"\n')
    assert_usage_error(capsys, [*argv, "--config", str(config)], "models.colors.bakend", "Extra inputs")
    monkeypatch.setenv("TLSERVE_MODELS__COLORS__BAKEND", "tensorflow")
    assert_usage_error(capsys, argv, "invalid settings", "models.colors.bakend", "Extra inputs")
