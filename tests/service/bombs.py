"""Decompression bombs: small, valid PNGs that declare (and really hold) huge images, JPEGs of
thousands of scans, BMP and GIF headers that declare huge images, and GIFs of countless tiny blocks."""

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


def bmp_bomb(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring width x height pixels, with none of them after it (BMP has no
    compression TensorFlow reads, so its header is what can be too large)."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info


ONE_PIXEL = b"\x2c" + struct.pack("<4HB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"  # LZW: clear, 0, end
GIF_HEADER = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"


def gif_bomb(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF of logical screen ``screen`` whose first frame is one black pixel and, when ``frame`` is
    larger, a second frame declaring ``frame`` (width, height) with no pixel data: the signature's
    canvas is as large as the largest frame, whatever the screen says."""
    out = [b"GIF89a", struct.pack("<HHBBB", *screen, 0x80, 0, 0), b"\x00\x00\x00\xff\xff\xff", ONE_PIXEL]
    if frame != (1, 1):
        out.append(b"\x2c" + struct.pack("<4HB", 0, 0, *frame, 0) + b"\x02\x01\x2c\x00")  # LZW: clear, end
    return b"".join([*out, b"\x3b"])


def gif_frame_bomb(frames: int) -> bytes:
    """A 1x1 GIF of ``frames`` one-pixel frames, 15 bytes each: 20 MiB holds 1.4 million, every one
    of which the canvas depends on."""
    return GIF_HEADER + ONE_PIXEL * frames + b"\x3b"


def gif_block_bomb(size: int, block: str) -> bytes:
    """A 1x1 GIF of one pixel and about ``size`` bytes of the smallest blocks: empty comment
    extensions (3 bytes), or 1-byte data sub-blocks of a second frame (2 bytes)."""
    if block == "extensions":
        return GIF_HEADER + ONE_PIXEL + b"\x21\xfe\x00" * (size // 3) + b"\x3b"
    second = b"\x2c" + struct.pack("<4HB", 0, 0, 1, 1, 0) + b"\x02" + b"\x01\x00" * (size // 2) + b"\x00"
    return GIF_HEADER + ONE_PIXEL + second + b"\x3b"
