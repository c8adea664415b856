"""`tlserve serve` and `tlserve predict` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import ServerProcess
from tests.service.images import encoded
from tests.test_cli import assert_usage_error, run_cli


def test_serve_refuses_a_missing_repository(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_usage_error(
        capsys, ["serve", "--repository", str(tmp_path / "nope")], "is not a directory", "tlserve export"
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--version-policy", "newest"], "version_policy"),
        (["--grpc-port", "70000"], "grpc_port"),
        (["--backend", "torch"], "backend"),
        (["--max-batch-size", "0"], "max_batch_size"),
    ],
)
def test_serve_names_a_bad_setting(
    capsys: pytest.CaptureFixture[str], tiny_repo: Path, args: list[str], fragment: str
) -> None:
    assert_usage_error(capsys, ["serve", "--repository", str(tiny_repo), *args], "invalid settings", fragment)


def test_serve_refuses_a_port_in_use(server: ServerProcess, tiny_repo: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tlserve", "serve", "--repository", str(tiny_repo), "--host", "127.0.0.1",
         "--grpc-port", str(server.grpc_port), "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot bind gRPC to 127.0.0.1:{server.grpc_port}" in result.stderr


def test_predict_prints_a_table_through_both_apis(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, tmp_path: Path
) -> None:
    files = []
    for color in ("red", "blue"):
        files.append(tmp_path / f"{color}.png")
        files[-1].write_bytes(encoded(color))
    for api in ("native", "tfs"):
        args = ["--model", "colors", "--server", server.target, "--api", api, "--top-k", "2"]
        code, out, err = run_cli(capsys, "predict", *map(str, files), *args)
        assert code == 0, err
        lines = out.splitlines()
        assert f"model colors v1, {api} API" in lines[0]
        assert lines[1].split()[1] == "red" and lines[2].split()[1] == "blue"
        assert len(lines[1].split()) == 1 + 2 * 2


def test_predict_errors(capsys: pytest.CaptureFixture[str], server: ServerProcess, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(encoded("red"))
    missing = str(tmp_path / "missing.png")
    assert_usage_error(
        capsys, ["predict", missing, "--model", "colors", "--server", server.target], "cannot read"
    )
    assert_usage_error(capsys, ["predict", str(image), "--model", "colors", "--top-k", "0"], "--top-k")
    code, _, err = run_cli(capsys, "predict", str(image), "--model", "nope", "--server", server.target)
    assert code == 1 and "NOT_FOUND: model 'nope' not found" in err
    code, _, err = run_cli(capsys, "predict", str(image), "--model", "colors", "--server", "127.0.0.1:1",
                           "--timeout-s", "2")  # fmt: skip
    assert code == 1 and "UNAVAILABLE" in err
