"""Encoded test images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.conftest import COLORS, make_image


def encoded(color: str, fmt: str = "PNG", size: int = 36, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    make_image(COLORS[color], np.random.default_rng(seed), size).save(buffer, fmt)
    return buffer.getvalue()


def solid(color: str, size: int) -> np.ndarray:
    """float32 [size, size, 3] of one colour."""
    return np.broadcast_to(np.asarray(COLORS[color], np.float32), (size, size, 3)).copy()


def to_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
