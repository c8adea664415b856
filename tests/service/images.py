"""Encoded test images."""

from __future__ import annotations

import io
import struct
from typing import Any

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


def bmp_file(
    rows: list[bytes],
    width: int,
    height: int,
    bits: int,
    compression: int = 0,
    palette: bytes = b"",
    used: int = 0,
) -> bytes:
    """A BMP with a BITMAPINFOHEADER holding ``rows`` as they are (padding and order are the
    caller's: bottom-up for a positive ``height``); ``palette``: 4 bytes per entry, or 3 masks;
    ``used``: the palette entries the header declares (0: all for the depth)."""
    data = b"".join(rows)
    offset = 14 + 40 + len(palette)
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(data), 2835, 2835, used, 0
    )
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def bmp_rows(pixels: np.ndarray) -> list[bytes]:
    """uint8 [H, W, 3] RGB -> 24-bit BMP rows, bottom-up, each padded to 4 bytes."""
    return [row[:, ::-1].tobytes() + b"\0" * (-3 * pixels.shape[1] % 4) for row in pixels[::-1]]


def _gif_frame(image: Image.Image, **save: Any) -> tuple[bytes, bytes, int, bytes]:
    """(colour table, graphic control extension or b"", interlace flag, image data: LZW code size
    and sub-blocks) of ``image`` saved by Pillow as a one-frame GIF."""
    buffer = io.BytesIO()
    image.save(buffer, "GIF", **save)
    data = buffer.getvalue()
    table_end = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    control, pos = b"", table_end
    while data[pos] == 0x21:
        start, pos = pos, pos + 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
        if data[start + 1] == 0xF9:
            control = data[start:pos]
    assert data[pos] == 0x2C and not data[pos + 9] & 0x80  # an image descriptor, no local table
    return data[13:table_end], control, data[pos + 9] & 0x40, data[pos + 10 : -1]


def gif_file(screen: tuple[int, int], frames: list[tuple[Image.Image, int, int]], **save: Any) -> bytes:
    """A GIF89a with a logical screen of ``screen`` (width, height) and no global colour table, each
    frame (image, left, top) with its own colour table as Pillow quantizes it."""
    out = [b"GIF89a", struct.pack("<HHBBB", *screen, 0, 0, 0)]
    for image, left, top in frames:
        table, control, interlace, pixels = _gif_frame(image, **save)
        flags = 0x80 | interlace | ((len(table) // 3).bit_length() - 2)
        out += [control, b"\x2c", struct.pack("<4HB", left, top, *image.size, flags), table, pixels]
    return b"".join([*out, b"\x3b"])
