"""Counting a JPEG's scans before decoding: what encoders write, what must not count, scan bombs."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.service.bombs import jpeg_scan_bomb
from tlserve.service.errors import InvalidArgument
from tlserve.service.images import decode_batch
from tlserve.service.jpeg import count_scans
from tlserve.service.settings import ServerSettings

ALLOWED = ["JPEG", "PNG"]


def jpeg(mode: str = "RGB", size: int = 48, **options: Any) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "scans"),
    [
        (jpeg(), 1),
        (jpeg(progressive=True), 10),  # libjpeg's progression for colour
        (jpeg("L", progressive=True), 6),
        (jpeg(restart_marker_blocks=1), 1),  # RSTn markers inside the entropy-coded data
        (jpeg(progressive=True, restart_marker_rows=1), 10),
        (jpeg(exif=b"Exif\0\0" + b"\xff\xda\0\x08" * 400), 1),  # SOS bytes inside an APP1 segment
        (jpeg(comment=b"\xff\xda" * 100), 1),  # and inside a COM segment
        (jpeg()[:-2] + b"\xff\xda\0\x02" * 3, 4),  # garbage after the scan without an EOI
        (b"\x89PNG\r\n\x1a\n", 0),
    ],
    ids=["baseline", "progressive", "progressive grey", "restart markers", "progressive restarts",
         "SOS in EXIF", "SOS in a comment", "no EOI", "not a JPEG"],
)  # fmt: skip
def test_scans_are_counted_along_the_marker_segments(data: bytes, scans: int) -> None:
    assert count_scans(data, 1000) == scans


def test_stuffed_ff_bytes_and_fill_bytes_are_not_scans() -> None:
    data = jpeg(quality=100)
    assert data.count(b"\xff\x00") > 0  # the entropy-coded data holds stuffed 0xFF bytes
    eoi = data.rindex(b"\xff\xd9")
    filled = data[:eoi] + b"\xff\xff\xff" + data[eoi:]  # fill bytes before the EOI marker
    assert count_scans(filled, 1000) == 1


def test_counting_stops_past_the_limit() -> None:
    assert count_scans(jpeg_scan_bomb(5000), 100) == 101
    assert count_scans(jpeg_scan_bomb(5000), 10_000) == 5000


def test_a_scan_bomb_is_refused_before_decoding_and_names_the_setting() -> None:
    limit = ServerSettings.model_fields["max_jpeg_scans"].default
    assert limit == 100
    with pytest.raises(InvalidArgument) as error:
        decode_batch([jpeg(), jpeg_scan_bomb(5000)], 8, 8, ALLOWED, 10**6, max_jpeg_scans=limit)
    assert str(error.value) == (
        "image 1: JPEG of more than 100 scans (setting max_jpeg_scans; a progressive-JPEG scan bomb)"
    )
    assert decode_batch([jpeg_scan_bomb(limit)], 8, 8, ALLOWED, 10**6, max_jpeg_scans=limit).shape == (
        1, 8, 8, 3)  # fmt: skip


def test_ordinary_progressive_jpegs_decode_within_the_default() -> None:
    default = ServerSettings().max_jpeg_scans
    for data in (jpeg(progressive=True), jpeg("L", progressive=True, restart_marker_rows=1)):
        assert decode_batch([data], 8, 8, ALLOWED, 10**6, max_jpeg_scans=default).shape == (1, 8, 8, 3)
