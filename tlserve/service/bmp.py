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
    if bits == 8:
        (used,) = struct.unpack_from("<I", data, 46)
        palette = data[FILE_HEADER + header : offset]  # NOTE: as many entries as fit before the pixels
        entries = min(used or 256, len(palette) // 4)
        if any(palette[4 * i : 4 * i + 3] != bytes((i, i, i)) for i in range(entries)):
            return "an 8-bit BMP with a colour palette"
    return ""
