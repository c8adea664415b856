"""The model registry in-process: policies, swap, drain, failed versions."""

from __future__ import annotations

import asyncio
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.service.tiny import SIZE, copy_version, publish
from tlserve.service.domain import State
from tlserve.service.errors import NotFound, Unavailable
from tlserve.service.registry import ModelRegistry
from tlserve.service.settings import ServerSettings


def repository(root: Path, **settings: object) -> tuple[ModelRegistry, list[tuple[str, bool]]]:
    changes: list[tuple[str, bool]] = []
    options = {"repository": root, "max_batch_size": 4, **settings}
    watcher = ModelRegistry(
        ServerSettings(**options), ThreadPoolExecutor(1), on_change=lambda n, s: changes.append((n, s))
    )  # type: ignore[arg-type]
    return watcher, changes


def serving(watcher: ModelRegistry, name: str = "colors") -> list[int]:
    return sorted(watcher.models[name].serving)


def break_onnx(version_dir: Path) -> None:
    (version_dir / "model.onnx").write_bytes(b"not a model")


def test_new_version_is_swapped_in_and_the_old_one_unloaded(tiny_repo: Path) -> None:
    async def main() -> None:
        watcher, changes = repository(tiny_repo)
        await watcher.poll()
        assert serving(watcher) == [1] and changes == [("colors", True)]
        old = watcher.models["colors"].versions[1]
        assert old.loaded is watcher.resolve("colors")
        copy_version(tiny_repo, "colors", 1, 2)
        await watcher.poll()
        assert serving(watcher) == [2]
        await watcher.close()
        assert old.state is State.UNLOADED and old.loaded is None

    asyncio.run(main())


def test_a_broken_version_leaves_the_previous_one_serving(tiny_repo: Path) -> None:
    async def main() -> None:
        watcher, _ = repository(tiny_repo)
        await watcher.poll()
        break_onnx(copy_version(tiny_repo, "colors", 1, 2))
        await watcher.poll()
        assert serving(watcher) == [1]
        failed = watcher.models["colors"].versions[2]
        assert failed.state is State.FAILED and "model.onnx" in failed.error and "sha256" in failed.error
        await watcher.poll()  # not retried while its files are unchanged
        assert watcher.models["colors"].versions[2] is failed
        manifest = tiny_repo / "colors" / "2" / "manifest.json"
        os.utime(manifest, ns=(manifest.stat().st_atime_ns, manifest.stat().st_mtime_ns + 10**9))
        await watcher.poll()  # changed: retried (and fails again)
        assert watcher.models["colors"].versions[2] is not failed
        assert serving(watcher) == [1]
        await watcher.close()

    asyncio.run(main())


def test_an_unreadable_manifest_is_reported(tiny_repo: Path) -> None:
    shutil.copytree(tiny_repo / "colors" / "1", tiny_repo / "colors" / "2")
    (tiny_repo / "colors" / "2" / "manifest.json").write_text("{ not json")

    async def main() -> None:
        watcher, _ = repository(tiny_repo)
        await watcher.poll()
        assert serving(watcher) == [1]
        assert "cannot read" in watcher.models["colors"].versions[2].error
        await watcher.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("latest", [3]), ("latest:2", [2, 3]), ("all", [1, 2, 3]), ("versions:1,3", [1, 3])],
)
def test_version_policies(tiny_repo: Path, policy: str, expected: list[int]) -> None:
    copy_version(tiny_repo, "colors", 1, 2)
    copy_version(tiny_repo, "colors", 1, 3)

    async def main() -> None:
        watcher, _ = repository(tiny_repo, version_policy=policy)
        await watcher.poll()
        assert serving(watcher) == expected
        assert watcher.resolve("colors").version == expected[-1]
        await watcher.close()

    asyncio.run(main())


def test_version_labels_resolve(tiny_repo: Path) -> None:
    copy_version(tiny_repo, "colors", 1, 2)

    async def main() -> None:
        watcher, _ = repository(
            tiny_repo, version_policy="all", models={"colors": {"version_labels": {"stable": 1, "canary": 2}}}
        )
        await watcher.poll()
        assert watcher.resolve("colors", label="stable").version == 1
        assert watcher.resolve("colors", label="canary").version == 2
        with pytest.raises(NotFound, match="labels: canary, stable"):
            watcher.resolve("colors", label="beta")
        await watcher.close()

    asyncio.run(main())


def test_a_retired_version_finishes_requests_that_hold_it(tiny_repo: Path) -> None:
    async def main() -> None:
        watcher, _ = repository(tiny_repo)
        await watcher.poll()
        record = watcher.models["colors"].versions[1]
        with watcher.lease("colors") as held:
            copy_version(tiny_repo, "colors", 1, 2)
            await watcher.poll()
            await asyncio.sleep(0.1)
            assert record.state is State.UNLOADING and record.loaded is held  # still usable
            assert held.batcher.pending == 0 and not held.idle.is_set()
            out = await held.batcher.submit(np.zeros((1, SIZE, SIZE, 3), np.float32))
            assert out.probabilities.shape == (1, 3) and out.embedding is None  # a tiny version: no embedding
            assert watcher.resolve("colors").version == 2
        for _ in range(100):  # NOTE: unloaded as soon as the lease ends (an event, no polling)
            if record.state is State.UNLOADED:
                break
            await asyncio.sleep(0.01)
        assert record.state is State.UNLOADED and record.loaded is None
        await watcher.close()

    asyncio.run(main())


def test_removed_models_and_odd_entries(tiny_repo: Path) -> None:
    (tiny_repo / "not a model name!").mkdir()
    (tiny_repo / ".hidden").mkdir()
    (tiny_repo / "README").write_text("not a dir")

    async def main() -> None:
        watcher, changes = repository(tiny_repo)
        await watcher.poll()
        assert sorted(watcher.models) == ["colors"]
        shutil.rmtree(tiny_repo / "colors")
        await watcher.poll()
        assert watcher.models == {} and changes[-1] == ("colors", False)
        with pytest.raises(NotFound):
            watcher.resolve("colors")
        await watcher.close()

    asyncio.run(main())


def test_a_model_with_no_loadable_version_is_unavailable(tmp_path: Path) -> None:
    break_onnx(publish(tmp_path, "colors", 1))

    async def main() -> None:
        watcher, _ = repository(tmp_path)
        await watcher.poll()
        with pytest.raises(Unavailable, match="v1 failed"):
            watcher.resolve("colors")
        await watcher.close()

    asyncio.run(main())


def test_a_version_seen_half_copied_is_retried_once_complete(tiny_repo: Path) -> None:
    source = tiny_repo / "colors" / "1"
    target = tiny_repo / "colors" / "2"

    async def main() -> None:
        watcher, _ = repository(tiny_repo)
        await watcher.poll()
        target.mkdir()  # a plain `cp -r` in progress: manifest first, model not complete yet
        for name in ("manifest.json", "labels.txt"):
            shutil.copy2(source / name, target / name)
        (target / "model.onnx").write_bytes((source / "model.onnx").read_bytes()[:100])
        await watcher.poll()
        assert watcher.models["colors"].versions[2].state is State.FAILED and serving(watcher) == [1]
        shutil.copy2(source / "model.onnx", target / "model.onnx")  # the copy completes
        await watcher.poll()
        assert serving(watcher) == [2]
        await watcher.close()

    asyncio.run(main())


def test_deleted_versions_are_forgotten(tiny_repo: Path) -> None:
    async def main() -> None:
        watcher, _ = repository(tiny_repo)
        await watcher.poll()
        copy_version(tiny_repo, "colors", 1, 2)
        await watcher.poll()
        await asyncio.sleep(0.1)  # version 1 drains and unloads
        shutil.rmtree(tiny_repo / "colors" / "1")
        await watcher.poll()
        assert sorted(watcher.models["colors"].versions) == [2]
        await watcher.close()

    asyncio.run(main())


def test_nothing_loads_after_close(tiny_repo: Path) -> None:
    async def main() -> None:
        watcher, _ = repository(tiny_repo)
        await watcher.close()
        await watcher.poll()
        assert watcher.models == {}

    asyncio.run(main())


def test_model_status_by_label_reports_a_failed_version(tiny_repo: Path) -> None:
    from tlserve.service.core import InferenceCore
    from tlserve.service.decoding import Decoder
    from tlserve.service.transport.tfs import ModelService
    from tlserve.service.wire.tfs import serving_pb2

    break_onnx(copy_version(tiny_repo, "colors", 1, 2))

    async def main() -> None:
        watcher, _ = repository(tiny_repo, models={"colors": {"version_labels": {"canary": 2}}})
        await watcher.poll()
        decoder = Decoder(watcher.settings)
        service = ModelService(InferenceCore(watcher, watcher.settings, decoder))
        request = serving_pb2.GetModelStatusRequest()
        request.model_spec.name = "colors"
        request.model_spec.version_label = "canary"
        [status] = (await service.GetModelStatus(request, None)).model_version_status  # type: ignore[arg-type]
        assert (status.version, status.state) == (2, serving_pb2.ModelVersionStatus.END)
        assert (
            "model.onnx" in status.status.error_message and str(tiny_repo) not in status.status.error_message
        )
        await watcher.close()

    asyncio.run(main())
