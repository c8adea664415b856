"""Real servers in subprocesses on 127.0.0.1 with ports the server picks, and a tiny repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.tiny import publish
from tlserve.service import launch
from tlserve.service.client import Tls


class ServerProcess(launch.ServerProcess):
    """The server as tests run it: the repository polled every 0.2 s."""

    def __init__(
        self,
        repository: Path | str,
        *args: str,
        env: dict[str, str] | None = None,
        tls: Tls | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(repository, "--poll-interval-s", "0.2", *args, env=env, tls=tls, token=token)


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    publish(repository, "colors", 1)
    return repository


@pytest.fixture(scope="module")
def module_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("models")
    publish(repository, "colors", 1)
    return repository


@pytest.fixture(scope="module")
def server(module_repo: Path) -> Iterator[ServerProcess]:
    """A server on the tiny repository, shared by a test module; max batch 8, messages up to 1 MiB,
    version label ``stable`` for version 1 of colors."""
    env = {
        "TLSERVE_MAX_MESSAGE_BYTES": str(1 << 20),
        "TLSERVE_MODELS__COLORS__VERSION_LABELS": '{"stable": 1}',
    }
    process = ServerProcess(module_repo, "--max-batch-size", "8", env=env)
    with process.client() as client:
        client.wait_ready("colors")
    yield process
    assert process.stop() == 0, process.log
