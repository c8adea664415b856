"""Counting a JPEG's scans from its bytes, before any decoding (progressive-JPEG scan bombs).

A progressive JPEG refines the whole image scan by scan, and the decoder passes over every
coefficient of the image for each scan: 5,000 tiny scans in a 105 KB file cost a 2048x2048 decode
15 s. Pillow and libjpeg write 10 scans for a progressive colour JPEG (6 grey); a baseline JPEG has 1
(one per component when not interleaved). The walk follows the marker segments as libjpeg does:
segment lengths are skipped (an EXIF thumbnail inside APP1 is not counted), and in the entropy-coded
data after each scan header only a real marker ends the scan (0xFF00 is a stuffed 0xFF byte, RSTn
markers and 0xFF fill bytes stay inside it).
"""

from __future__ import annotations

import re

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
STANDALONE = frozenset({0x01, SOI, *range(0xD0, 0xD8)})
"""Markers without a length: TEM, SOI, RST0..RST7."""
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""In entropy-coded data, the first marker that is not stuffing, a restart or a fill byte."""


def count_scans(data: bytes, limit: int) -> int:
    """Scans (SOS segments) in the JPEG ``data`` up to its first EOI; counting stops at ``limit`` + 1.
    Malformed data ends the walk early (the decoder reports it); 0 when ``data`` is not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return 0
    scans, pos, size = 0, 2, len(data)
    while pos + 1 < size:
        if data[pos] != 0xFF:  # NOTE: libjpeg skips stray bytes before a marker (with a warning)
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        pos += 2
        if marker == 0xFF:  # a fill byte before the marker
            pos -= 1
            continue
        if marker == EOI:
            break
        if marker in STANDALONE:
            continue
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            break
        pos += length
        if marker == SOS:
            scans += 1
            if scans > limit:
                break
            found = _END_OF_SCAN.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans
