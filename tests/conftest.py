"""Shared fixtures: tiny image folders generated on the fly, never downloaded."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COLORS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (50, 60, 210)}
FORMATS = [("png", "RGB"), ("jpg", "RGB"), ("bmp", "RGB"), ("gif", "P"), ("png", "L"), ("png", "RGBA")]


def make_image(color: tuple[int, int, int], rng: np.random.Generator, size: int = 36) -> Image.Image:
    noise = rng.normal(0, 25, (size, size, 3))
    pixels = np.clip(np.asarray(color, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def write_folder(
    root: Path, per_class: int = 8, classes: dict[str, tuple[int, int, int]] | None = None, seed: int = 0
) -> Path:
    """One subfolder per class, images cycling through PNG/JPEG/BMP/GIF, gray and RGBA included."""
    rng = np.random.default_rng(seed)
    for name, color in (classes or COLORS).items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, mode = FORMATS[i % len(FORMATS)]
            image = make_image(color, rng)
            image = image.convert(mode) if mode != "RGB" else image
            image.save(folder / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "data")


@pytest.fixture(autouse=True)
def _clean_tlserve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TLSERVE_"):
            monkeypatch.delenv(key)


_RANDOM_WEIGHTS = Path(tempfile.mkdtemp(prefix="tlserve-random-weights-"))
atexit.register(shutil.rmtree, _RANDOM_WEIGHTS, ignore_errors=True)


def random_weights(base: str) -> str:
    """The path of a weights file holding a randomly initialised ``base`` (no top), made once.

    The trainer refuses a frozen base with ``--weights none`` (its features would be noise); tests
    that want a cheap frozen base that still learns (VGG16 has no BatchNorm: its random features
    carry colours) pass a random weights file instead, which is what a user's own file looks like.
    """
    path = _RANDOM_WEIGHTS / f"{base}.weights.h5"
    if not path.is_file():
        import keras

        from tlserve.training.bases import get_base

        builder = getattr(keras.applications, get_base(base).builder)
        keras.utils.set_random_seed(0)  # NOTE: the same random network in every run of the suite
        builder(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return str(path)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run that has learnt something (so parity compares informative outputs):
    a frozen VGG16 (random init, no BatchNorm) at 32 px on three colours, 12 images each."""
    from tlserve.training import rundir
    from tlserve.training.config import TrainConfig
    from tlserve.training.trainer import train

    root = tmp_path_factory.mktemp("export-run")
    data = write_folder(root / "data", per_class=12)
    out = root / "run"
    train(
        TrainConfig(
            data_dir=data, out=out, base="vgg16", weights=random_weights("vgg16"), image_size=32,
            epochs=12, lr=2e-2, batch_size=8, augment=(), val_split=0.25,
        )
    )  # fmt: skip
    assert rundir.read_run_json(out)["metrics"]["accuracy"] >= 0.8
    return out


@pytest.fixture(scope="session")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``run_dir`` exported by the real exporter (SavedModel, ONNX fp32/fp16/int8): an ExportResult."""
    from tlserve.exporters.export import ExportOptions, export

    repository = tmp_path_factory.mktemp("repo")
    return export(ExportOptions(run_dir=run_dir, repository=repository, name="colors", fp16=True, int8=True))
