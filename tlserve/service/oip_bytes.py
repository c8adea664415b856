"""The Open Inference Protocol's raw layout of a BYTES tensor: each element a 4-byte little-endian
length, then its bytes. Shared by the server's codec (answers) and the request builders (requests);
the server's reading of it, with every length checked, is in ``transport.oip_codec``."""

from __future__ import annotations

import struct
from collections.abc import Iterable


def join_bytes(items: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)
