"""Where the exported signature puts a GIF's first frame, read from the GIF's bytes before decoding.

TensorFlow's GIF decoder (what ``predict_images`` runs, through ``tf.io.decode_image``) draws the
frames on a canvas as wide as the widest frame and as high as the highest — not on the logical
screen, as Pillow does — with the first frame at its offset, cut to the canvas, and its transparent
pixels and whatever it leaves uncovered black (measured with TensorFlow 2.21:
tests/service/test_images.py). The walk follows the blocks as giflib does: colour tables and data
sub-blocks are skipped by their lengths, and every image descriptor is read, so that the canvas is
known (and its pixels checked) before anything is decoded. Malformed data ends the walk early.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SIGNATURES = (b"GIF87a", b"GIF89a")
IMAGE, EXTENSION = 0x2C, 0x21


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


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """The position after the data sub-blocks at ``pos`` (and their terminator); -1 if cut short."""
    size = len(data)
    while pos < size:
        length = data[pos]
        if length == 0:
            return pos + 1
        pos += length + 1
    return -1


def layout(data: bytes) -> Layout | None:
    """The signature's canvas and first frame of the GIF ``data``; None when it is not a GIF or
    holds no frame (the decoder says what is wrong)."""
    if data[:6] not in SIGNATURES or len(data) < 13:
        return None
    frames: list[tuple[int, int, int, int]] = []
    pos = 13 + _table(data[10])
    while 0 <= pos < len(data):
        if data[pos] == IMAGE and pos + 11 <= len(data):
            frames.append(struct.unpack_from("<4H", data, pos + 1))
            pos = _skip_sub_blocks(data, pos + 11 + _table(data[pos + 9]))  # NOTE: + LZW code size
        elif data[pos] == EXTENSION:
            pos = _skip_sub_blocks(data, pos + 2)
        else:  # the trailer, or malformed
            break
    if not frames:
        return None
    left, top, width, height = frames[0]
    canvas = max(f[2] for f in frames), max(f[3] for f in frames)
    return Layout(*canvas, (left, top, left + width, top + height))
