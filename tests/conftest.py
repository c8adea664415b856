"""Shared fixtures: tiny image folders generated on the fly, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

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
