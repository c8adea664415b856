"""The core in-process: every answer the APIs give about models (status, metadata, readiness) and
their predictions, once; tests/service/test_{tfs_api,oip,native_api,rest}.py check the translations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import tlserve
from tests.service.images import encoded, solid
from tests.service.test_registry import break_onnx
from tests.service.tiny import LABELS, SIZE, copy_version
from tlserve.service.core import InferenceCore
from tlserve.service.decoding import Decoder
from tlserve.service.domain import ModelRef, State, Tensor
from tlserve.service.errors import InvalidArgument, NotFound, Unavailable
from tlserve.service.registry import ModelRegistry
from tlserve.service.settings import ServerSettings

LABELLED = {"colors": {"version_labels": {"stable": 1, "broken": 2, "later": 3}}}


def run(repository: Path, check: Callable[[InferenceCore], Awaitable[None]], **settings: object) -> None:
    """``check`` on a core over ``repository`` (versions 1 serving, 2 failed to load)."""

    async def main() -> None:
        options = ServerSettings(repository=repository, max_batch_size=4, **settings)  # type: ignore[arg-type]
        registry = ModelRegistry(options, ThreadPoolExecutor(1))
        core = InferenceCore(registry, options, Decoder(options))
        assert not core.ready()  # nothing scanned yet
        await registry.poll()
        try:
            await check(core)
        finally:
            await registry.close()

    asyncio.run(main())


@pytest.fixture
def repository(tiny_repo: Path) -> Path:
    break_onnx(copy_version(tiny_repo, "colors", 1, 2))
    return tiny_repo


def test_status_lists_every_version_or_the_one_asked_for(repository: Path) -> None:
    async def check(core: InferenceCore) -> None:
        status = core.status(ModelRef("colors"))
        assert status.name == "colors" and status.serving == (1,)
        good, failed = status.versions
        assert (good.version, good.state, good.ready, good.error) == (1, State.AVAILABLE, True, "")
        assert (good.labels, good.image_size, good.backend, good.artifact) == (
            tuple(LABELS),
            (SIZE, SIZE),
            "onnxruntime",
            "model.onnx",
        )
        assert good.exported_as == "colors/1" and good.providers == ("CPUExecutionProvider",)
        assert (failed.version, failed.state, failed.ready) == (2, State.FAILED, False)
        assert "sha256" in failed.error and str(repository) not in failed.error and failed.labels == ()
        assert core.status(ModelRef("colors", version=2)).versions == (failed,)
        assert core.status(ModelRef("colors", label="broken")).versions == (failed,)
        assert core.models() == [status]
        with pytest.raises(NotFound, match=r"no version 7 \(versions: 1, 2\)"):
            core.status(ModelRef("colors", version=7))
        with pytest.raises(NotFound, match="no version 3"):  # a label of a version not on disk
            core.status(ModelRef("colors", label="later"))
        with pytest.raises(NotFound, match=r"no version label 'beta' \(labels: broken, later, stable"):
            core.status(ModelRef("colors", label="beta"))
        with pytest.raises(NotFound, match=r"'nope' not found \(models: colors"):
            core.status(ModelRef("nope"))
        with pytest.raises(InvalidArgument, match="no model name"):
            core.status(ModelRef(""))

    run(repository, check, models=LABELLED)


def test_metadata_lists_both_inputs(repository: Path) -> None:
    async def check(core: InferenceCore) -> None:
        for ref in (ModelRef("colors"), ModelRef("colors", version=1), ModelRef("colors", label="stable")):
            metadata = core.metadata(ref)
            assert (metadata.name, metadata.version, metadata.serving) == ("colors", 1, (1,))
            assert (metadata.backend, metadata.labels, metadata.image_size) == (
                "onnxruntime",
                tuple(LABELS),
                (SIZE, SIZE),
            )
            assert metadata.inputs == (
                Tensor("image", "FP32", (-1, SIZE, SIZE, 3)),
                Tensor("images", "BYTES", (-1,)),
            )
            assert metadata.outputs == (Tensor("probabilities", "FP32", (-1, len(LABELS))),)
        with pytest.raises(NotFound, match="version 2 is not served"):  # failed: no interface to tell
            core.metadata(ModelRef("colors", version=2))
        with pytest.raises(NotFound, match="no version label 'beta'"):
            core.metadata(ModelRef("colors", label="beta"))

    run(repository, check, models=LABELLED)


def test_readiness_of_the_server_a_model_and_a_version(repository: Path) -> None:
    async def check(core: InferenceCore) -> None:
        assert core.ready()
        asked = ["colors", ("colors", 1), ("colors", 2), ("colors", 9), ("colors", None, "stable"),
                 ("colors", None, "broken"), ("colors", None, "beta"), "nope"]  # fmt: skip
        refs = [ModelRef(a) if isinstance(a, str) else ModelRef(*a) for a in asked]
        assert [core.ready(ref) for ref in refs] == [True, True, False, False, True, False, False, False]

    run(repository, check, models=LABELLED)


def test_a_model_with_no_version_ready(tiny_repo: Path) -> None:
    break_onnx(tiny_repo / "colors" / "1")

    async def check(core: InferenceCore) -> None:
        assert not core.ready() and not core.ready(ModelRef("colors"))
        assert core.status(ModelRef("colors")).serving == ()
        with pytest.raises(Unavailable, match=r"no version ready \(v1 failed"):
            core.metadata(ModelRef("colors"))

    run(tiny_repo, check)


def test_server_metadata() -> None:
    core = InferenceCore(None, ServerSettings(), None)  # type: ignore[arg-type]
    server = core.server_metadata()
    assert (server.name, server.version, server.extensions) == (
        "tlserve",
        tlserve.__version__,
        ("classification",),
    )


def test_predictions_carry_their_labels_and_classify_ranks_them(repository: Path) -> None:
    async def check(core: InferenceCore) -> None:
        pixels = np.stack([solid(c, SIZE) for c in ("red", "blue")])
        by_pixels = await core.infer(ModelRef("colors"), pixels)
        assert (by_pixels.name, by_pixels.version, list(by_pixels.labels)) == ("colors", 1, LABELS)
        assert [by_pixels.labels[i] for i in by_pixels.probabilities.argmax(1)] == ["red", "blue"]
        images = [encoded("red"), encoded("blue")]
        by_images = await core.infer(ModelRef("colors", label="stable"), images)
        assert [by_images.labels[i] for i in by_images.probabilities.argmax(1)] == ["red", "blue"]
        every = await core.classify(ModelRef("colors"), images)
        assert [len(row) for row in every.top] == [3, 3] and [row[0].label for row in every.top] == [
            "red",
            "blue",
        ]
        for row in every.top:
            assert [s.score for s in row] == sorted((s.score for s in row), reverse=True)
            assert all(LABELS[s.index] == s.label for s in row)
        two = await core.classify(ModelRef("colors"), images, 2)
        assert [[s.label for s in row] for row in two.top] == [
            [s.label for s in row[:2]] for row in every.top
        ]
        assert [len(row) for row in (await core.classify(ModelRef("colors"), images, 50)).top] == [3, 3]
        with pytest.raises(InvalidArgument, match="top-k must be positive; got 0"):
            await core.classify(ModelRef("colors"), images, 0)
        with pytest.raises(InvalidArgument, match="empty batch"):
            await core.infer(ModelRef("colors"), [])
        with pytest.raises(InvalidArgument, match=r"pixels must have shape \[N, 16, 16, 3\]"):
            await core.infer(ModelRef("colors"), pixels[:, :8])
        with pytest.raises(InvalidArgument, match="image 1: "):
            await core.infer(ModelRef("colors"), [images[0], b"junk"])

    run(repository, check, models=LABELLED)


def test_a_model_folder_with_no_version_and_an_unloaded_version(tiny_repo: Path) -> None:
    (tiny_repo / "empty").mkdir()

    async def check(core: InferenceCore) -> None:
        with pytest.raises(NotFound, match="'empty' has no versions"):  # as TF Serving answers
            core.status(ModelRef("empty"))
        assert not core.ready(ModelRef("empty"))
        copy_version(tiny_repo, "colors", 1, 2)
        await core.registry.poll()  # version 2 replaces version 1, which is drained and unloaded
        for _ in range(100):
            old = core.status(ModelRef("colors", version=1)).versions[0]
            if old.state is State.UNLOADED:
                break
            await asyncio.sleep(0.01)
        assert old.state is State.UNLOADED and old.labels == tuple(LABELS)  # still says what it was
        assert old.image_size == (SIZE, SIZE) and old.backend == ""  # no runtime any more

    run(tiny_repo, check)
