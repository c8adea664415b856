"""Decompression bombs: small, valid PNGs that declare (and really hold) huge images, and JPEGs of
thousands of scans."""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=8)
def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of width x height black pixels, compressed (~1000:1) without ever
    holding the image in memory: 20000 x 20000 (400 M pixels) is about 400 KB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale, no interlace
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    rows_per_step = max(1, (16 << 20) // len(row))
    parts = []
    for start in range(0, height, rows_per_step):
        parts.append(compressor.compress(row * min(rows_per_step, height - start)))
    parts.append(compressor.flush())
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=8)
def jpeg_scan_bomb(scans: int, size: int = 64) -> bytes:
    """A progressive JPEG of ``scans`` scans: Pillow's (10 for colour), then its last scan, a tiny AC
    refinement of a flat image, repeated until there are ``scans``. A 2048 px one of 5,000 scans is
    105 KB and costs libjpeg about 15 s; 64 px keeps the file small (55 KB) for the same count."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 130, 140)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    assert data.count(b"\xff\xda") == 10 and data.endswith(b"\xff\xd9")  # SOS bytes occur only as markers
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * (scans - 10) + b"\xff\xd9"
