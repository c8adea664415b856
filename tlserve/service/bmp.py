"""Which BMPs the exported signature reads as Pillow does, told from the header before decoding.

TensorFlow's BMP decoder (what ``predict_images`` runs, through ``tf.io.decode_image``) reads
uncompressed 8-, 24- and 32-bit BMPs, bottom-up or top-down, and refuses the rest (1-, 4- and 16-bit,
RLE); it ignores an 8-bit image's palette (the indices become grey levels: right only for a grey
palette) and a 32-bit image's channel masks (the bytes are taken as blue, green, red, alpha), and it
refuses a file not exactly as long as its header says. Pillow reads all of those, and reads them
right: the server refuses the BMPs the two read differently, so that served pixels stay the
signature's (measured with TensorFlow 2.21: tests/service/test_images.py). The trainer leaves the
same palette BMPs out of training (tlserve/training/data.py).
"""

from __future__ import annotations

import struct

FILE_HEADER = 14
INFO_HEADER = 40
"""BITMAPINFOHEADER, the smallest header TensorFlow reads (its fields at fixed offsets)."""
BGR_MASKS = (0xFF0000, 0x00FF00, 0x0000FF)
"""Red, green and blue masks of the byte order TensorFlow assumes (BI_BITFIELDS)."""
BI_RGB, BI_BITFIELDS = 0, 3


def problem(data: bytes) -> str:
    """What in the BMP ``data`` the signature would not read as Pillow does; empty when nothing
    (or when ``data`` is too short to tell: the decoder then says what is wrong)."""
    if len(data) < FILE_HEADER + INFO_HEADER + 12 or data[:2] != b"BM":
        return ""
    (offset,) = struct.unpack_from("<I", data, 10)
    header, width, height, _, bits, compression = struct.unpack_from("<IiiHHI", data, FILE_HEADER)
    if header < INFO_HEADER:
        return f"an OS/2 BMP ({header}-byte header)"
    if bits not in (8, 24, 32):
        return f"a {bits}-bit BMP"
    if compression == BI_BITFIELDS and bits == 32:
        if struct.unpack_from("<3I", data, FILE_HEADER + INFO_HEADER) != BGR_MASKS:
            return "a 32-bit BMP whose channels are not in blue, green, red order"
    elif compression != BI_RGB:
        return f"a compressed BMP (compression {compression})"
    expected = offset + (bits // 8 * abs(width) + 3) // 4 * 4 * abs(height)
    if len(data) != expected:
        return f"a BMP of {len(data)} bytes, not the {expected} its header declares"
    return _palette_problem(data, header, offset) if bits == 8 else ""


def _palette_problem(data: bytes, header: int, offset: int) -> str:
    """Whether Pillow reads an 8-bit BMP's pixels as grey levels, as the signature does: it reads
    ``used`` palette entries (all 256 when 0) right after the header, wherever the pixels start,
    and only a palette of grey levels 0, 1, 2, ... of more than two entries makes it keep them."""
    (used,) = struct.unpack_from("<I", data, 46)
    entries = used or 256
    if entries > 256:
        return f"an 8-bit BMP of {used} palette entries (at most 256)"
    start = FILE_HEADER + header
    if start + 4 * entries > offset:  # NOTE: Pillow would read part of the pixels as the palette
        return f"an 8-bit BMP whose palette of {entries} entries does not fit before its pixels"
    if entries <= 2:  # NOTE: Pillow takes a grey one of one or two entries for a 1-bit image's
        return f"an 8-bit BMP of {entries} palette entries"
    palette = data[start : start + 4 * entries]
    if any(palette[4 * i : 4 * i + 3] != bytes((i, i, i)) for i in range(entries)):
        return "an 8-bit BMP with a colour palette"
    return ""
