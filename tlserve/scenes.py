"""Small offline image sets for the demo and ``make bench-transfer``: glyphs in cluttered scenes.

A network learns an upscaled 8x8 digit on a black background from a handful of examples, from
scratch; what it cannot learn from ten images is what to ignore. Photos have backgrounds, clutter,
colour and position that vary, and that is what a pretrained network brings. So a glyph (one of
scikit-learn's 1,797 handwritten digits, or a letter drawn in Pillow's bundled font) is placed at a
random size, angle and position on a textured, coloured background with a few random strokes over
it, and drawn in a colour that contrasts with the background.

Everything is generated from a seed: no downloads.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CANVAS = 64  # drawn at twice the output size, then downsampled (anti-aliased)


def texture(rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
    """A grey [size, size] texture in [-1, 1]: blobs (gravel), bricks, or directional streaks (grass)."""
    kind = int(rng.integers(3))
    if kind == 0:
        return _blur(rng.normal(size=(size, size)), int(rng.integers(1, 4)))
    if kind == 1:
        h, w = int(rng.integers(6, 14)), int(rng.integers(12, 26))
        y, x = np.mgrid[0:size, 0:size]
        row = (y + int(rng.integers(h))) // h
        mortar = ((y % h) < 2) | (((x + (row % 2) * (w // 2)) % w) < 2)
        out = np.where(mortar, -1.0, 0.4) + rng.normal(0, 0.3, (size, size))
        return np.clip(_blur(out, 1), -1, 1)
    streaks = _blur(rng.normal(size=(size, size)), 1)
    return np.clip(np.cumsum(streaks, axis=int(rng.integers(2))) / 4.0, -1, 1)


def _blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Box blur (radius passes along each axis), scaled to [-1, 1]."""
    for axis in (0, 1):
        for _ in range(radius):
            a = (np.roll(a, 1, axis) + a + np.roll(a, -1, axis)) / 3.0
    peak = float(np.abs(a).max()) or 1.0
    return a / peak


def render(glyph: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """``glyph`` (float [h, w], 1 = ink) in a cluttered scene: uint8 [size, size, 3]."""
    background = rng.uniform(0.15, 0.85, 3)
    tex = texture(rng) * rng.uniform(0.08, 0.25)
    tinted = np.clip(background[None, None, :] + tex[..., None] * rng.uniform(0.5, 1.0, 3), 0, 1)
    image = Image.fromarray(np.uint8(tinted * 255))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 3))):
        ends = [(int(rng.integers(CANVAS)), int(rng.integers(CANVAS))) for _ in range(2)]
        draw.line(ends, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    scene = np.asarray(image, dtype=np.float32) / 255.0
    side = int(rng.integers(int(CANVAS * 0.55), int(CANVAS * 0.85)))
    ink_map = Image.fromarray(np.uint8(np.clip(glyph, 0, 1) * 255), mode="L")
    ink_map = ink_map.resize((side, side), Image.Resampling.BILINEAR)
    ink_map = ink_map.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR)
    mask = np.zeros((CANVAS, CANVAS), np.float32)
    top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, 2))
    mask[top : top + side, left : left + side] = np.asarray(ink_map, np.float32) / 255.0
    ink = rng.uniform(0.0, 0.3, 3) if background.mean() > 0.5 else rng.uniform(0.7, 1.0, 3)
    out = scene * (1 - mask[..., None]) + ink[None, None, :] * mask[..., None]
    small = Image.fromarray(np.uint8(np.clip(out, 0, 1) * 255)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(small)


def digit_glyphs(seed: int = 0) -> dict[int, list[np.ndarray]]:
    """scikit-learn's handwritten digits as glyphs (10x10 with a blank border), shuffled per class."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    out: dict[int, list[np.ndarray]] = {}
    for digit in range(10):
        images = data.images[data.target == digit] / 16.0
        out[digit] = [np.pad(x, 1) for x in images[rng.permutation(len(images))]]
    return out


def letter_glyphs(letters: str = string.ascii_uppercase) -> dict[str, np.ndarray]:
    """Capital letters in Pillow's bundled font, centred on a 48x48 square."""
    font = ImageFont.load_default(size=40)
    out: dict[str, np.ndarray] = {}
    for letter in letters:
        image = Image.new("L", (48, 48), 0)
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
        draw.text(
            ((48 - (right - left)) / 2 - left, (48 - (bottom - top)) / 2 - top), letter, fill=255, font=font
        )
        out[letter] = np.asarray(image, np.float32) / 255.0
    return out


def write(folder: Path, images: list[np.ndarray]) -> None:
    """``images`` as ``folder/0000.png, 0001.png, …``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def scenes(
    glyphs: list[np.ndarray], count: int, rng: np.random.Generator, size: int = 32
) -> list[np.ndarray]:
    """``count`` scenes, cycling through ``glyphs`` (each glyph in several scenes when count > len)."""
    return [render(glyphs[i % len(glyphs)], rng, size) for i in range(count)]
