"""Where the exported signature puts a GIF's first frame, read from the GIF's bytes before decoding.

TensorFlow's GIF decoder (what ``predict_images`` runs, through ``tf.io.decode_image``) draws the
frames on a canvas as wide as the widest frame and as high as the highest — not on the logical
screen, as Pillow does — with the first frame at its offset, cut to the canvas, and its transparent
pixels and whatever it leaves uncovered black (measured with TensorFlow 2.21:
tests/service/test_images.py). The walk follows the blocks as giflib does: colour tables and data
sub-blocks are skipped by their lengths, and every image descriptor is read, so that the canvas is
known (and its pixels checked) before anything is decoded. Malformed data ends the walk early.

The walk costs constant memory and a bounded number of steps: it keeps the first frame and the
running canvas only, stops once the canvas is over the pixel limit, and refuses a GIF of more than
``max_gif_frames`` frames or of more blocks than its size accounts for (``BLOCK_BYTES``). Stopping
at the frame limit instead would change the canvas, which depends on every frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SIGNATURES = (b"GIF87a", b"GIF89a")
IMAGE, EXTENSION = 0x2C, 0x21
MAX_FRAMES = 1000
"""Default of the setting ``max_gif_frames``."""
BLOCK_BYTES = 64
"""The walk steps over at most one block (descriptor, extension or data sub-block) per this many
bytes of the file, and ``MIN_BLOCKS`` in any file: encoders write 255-byte data sub-blocks (20 MiB of
GIF is about 82,000 blocks), while a file of 3-byte extensions or 2-byte sub-blocks would cost a
Python step per 2-3 bytes (0.8-2 s for 20 MiB)."""
MIN_BLOCKS = 1 << 16


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    """The canvas: the widest frame's width and the highest frame's height."""
    box: tuple[int, int, int, int]
    """The first frame on the logical screen: left, top, right, bottom."""

    def visible(self) -> tuple[int, int, int, int]:
        """The part of the first frame on the canvas (same coordinates); empty when none is."""
        left, top, right, bottom = self.box
        return left, top, max(left, min(right, self.width)), max(top, min(bottom, self.height))


def _table(flags: int) -> int:
    """Bytes of the colour table that follows a descriptor with these flags."""
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _too_many_blocks(data: bytes) -> ValueError:
    limit = max(MIN_BLOCKS, len(data) // BLOCK_BYTES)
    return ValueError(f"GIF of more than {limit} blocks in {len(data)} bytes (at most one per {BLOCK_BYTES} "
                      "bytes is read before decoding; encoders write 255-byte data sub-blocks)")  # fmt: skip


def _skip_sub_blocks(data: bytes, pos: int, budget: int) -> tuple[int, int]:
    """The position after the data sub-blocks at ``pos`` (and their terminator), -1 if cut short;
    and the ``budget`` of blocks left after them."""
    size = len(data)
    while pos < size:
        if not budget:
            raise _too_many_blocks(data)
        budget -= 1
        length = data[pos]
        if length == 0:
            return pos + 1, budget
        pos += length + 1
    return -1, budget


def layout(data: bytes, max_pixels: int, max_frames: int = MAX_FRAMES) -> Layout | None:
    """The signature's canvas and first frame of the GIF ``data``; None when it is not a GIF or
    holds no frame (the decoder says what is wrong). The walk stops at the first frame that makes
    the canvas larger than ``max_pixels`` (the caller refuses it); ValueError when there are more
    than ``max_frames`` frames, or more blocks than ``BLOCK_BYTES`` allows."""
    size = len(data)
    if data[:6] not in SIGNATURES or size < 13:
        return None
    budget = max(MIN_BLOCKS, size // BLOCK_BYTES)
    first: tuple[int, int, int, int] | None = None
    frames = width = height = 0
    pos = 13 + _table(data[10])
    while 0 <= pos < size:
        if not budget:
            raise _too_many_blocks(data)
        budget -= 1
        if data[pos] == IMAGE and pos + 11 <= size:
            frames += 1
            if frames > max_frames:
                raise ValueError(f"GIF of more than {max_frames} frames (setting max_gif_frames; the "
                                 "canvas is the largest frame's: every frame is read first)")  # fmt: skip
            left, top, frame_width, frame_height = struct.unpack_from("<4H", data, pos + 1)
            if first is None:
                first = left, top, left + frame_width, top + frame_height
            width, height = max(width, frame_width), max(height, frame_height)
            if width * height > max_pixels:
                break
            start = pos + 11 + _table(data[pos + 9])  # NOTE: + LZW code size
        elif data[pos] == EXTENSION:
            start = pos + 2
        else:  # the trailer, or malformed
            break
        pos, budget = _skip_sub_blocks(data, start, budget)
    return None if first is None else Layout(width, height, first)
