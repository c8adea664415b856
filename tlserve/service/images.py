"""Encoded images -> float32 pixel batches, as the exporter's ``predict_images`` signature makes them.

The exported signature decodes JPEG, PNG, BMP and GIF with TensorFlow (``tf.io.decode_image``: RGB,
a GIF's first frame) and resizes with ``tf.image.resize(method="bilinear")``: half-pixel centres, no
antialiasing, aspect ratio not kept. Here Pillow decodes, a GIF's first frame is laid out as
TensorFlow lays it out (``gif``), and ``resize_bilinear`` reimplements that resize in numpy, so
serving needs no TensorFlow. Differences from the signature, on purpose: EXIF orientation is applied
(TensorFlow ignores it), only ``allowed`` formats are accepted, BMPs that TensorFlow reads wrongly or
not at all are refused (``bmp``), and the pixel count (and a JPEG's scan count, a GIF's frame
count) is checked before decoding.
Parity with the signature is measured by tests/service/test_images.py (PNG, BMP, GIF: identical
pixels; JPEG: both use libjpeg, differing by at most a few levels on some pixels).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlserve import repository as repo
from tlserve.service import bmp, gif
from tlserve.service.errors import DeadlineExceeded, InvalidArgument
from tlserve.service.jpeg import count_scans

ORIENTATION = 0x0112  # the EXIF tag


def configure_pillow(max_pixels: int) -> None:
    """Make Pillow's own bomb check, run as it opens an image, follow ``max_pixels`` (setting
    max_image_pixels) and raise, not warn: once, when a server starts (it is process-wide). Every
    image's size is checked against the server's limit from its headers anyway (``open_image``)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    # NOTE: Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb must be an error
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def _axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source indices and the interpolation weight for each output index."""
    # NOTE: in float32, as TensorFlow's kernel computes them (its HalfPixelScaler): positions in
    # float64 differ from its own by up to 0.06 levels when shrinking 20 times or more
    scale = np.float32(in_size) / np.float32(out_size)
    pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(pos)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.intp)
    return lower, upper, pos - floor


def resize_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.image.resize(pixels, (height, width), "bilinear")`` for one HxWxC image, as float32.

    The four neighbours of every output pixel are gathered directly, so memory and time are
    O(output) whatever the source's shape: interpolating whole source rows first would cost
    [height, source width, C] floats, 670 MB for a 250000x1 strip at 224 px."""
    y0, y1, wy = _axis(pixels.shape[0], height)
    x0, x1, wx = _axis(pixels.shape[1], width)
    rows0, rows1 = y0[:, None], y1[:, None]
    weights = wx[None, :, None]
    # NOTE: the same float32 operations in the same order as TensorFlow's kernel (top, bottom, then
    # between them), so the results match it as before
    top_left = pixels[rows0, x0].astype(np.float32)
    top = top_left + (pixels[rows0, x1].astype(np.float32) - top_left) * weights
    bottom_left = pixels[rows1, x0].astype(np.float32)
    bottom = bottom_left + (pixels[rows1, x1].astype(np.float32) - bottom_left) * weights
    return top + (bottom - top) * wy[:, None, None]


def _channels(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, C]: C = 1 for grayscale (expanded to RGB after the resize, which is per channel,
    so a large grey image never costs three full-size planes), else 3."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: keep the high byte, as TF does
        return (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)[:, :, None]
    if image.mode == "L":
        return np.asarray(image)[:, :, None]
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # NOTE: convert() copies


def _oriented(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; only when there is one (exif_transpose copies the image otherwise too)."""
    with contextlib.suppress(Exception):  # malformed EXIF: serve the image as stored, not refuse it
        if image.getexif().get(ORIENTATION, 1) != 1:
            return ImageOps.exif_transpose(image) or image
    return image


@dataclass(frozen=True)
class Opened:
    """An encoded image whose headers are read and checked; nothing decoded yet."""

    image: Image.Image
    pixels: int
    """What decoding it allocates, in pixels: Pillow's image, plus for a GIF the signature's canvas
    (both are held at once while the first frame is copied onto the canvas)."""
    gif: gif.Layout | None = None
    """A GIF's canvas and first frame, as the signature lays them out."""


def open_image(
    data: bytes,
    allowed: Sequence[str],
    max_pixels: int,
    max_bytes: int | None = None,
    max_jpeg_scans: int | None = None,
    max_gif_frames: int = gif.MAX_FRAMES,
) -> Opened:
    """Read an encoded image's headers only (nothing decoded yet), and a JPEG's scans or a GIF's
    frames from its bytes; ValueError says what is wrong."""
    if not data:
        raise ValueError("empty image")
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes is more than the limit of {max_bytes} (setting max_image_bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=list(allowed))
    except UnidentifiedImageError:
        raise ValueError(_not_allowed(data, allowed)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own check
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)):,} pixels" if found else "more pixels"
        raise ValueError(f"declares {declared}, more than the limit of {max_pixels} (setting "
                         "max_image_pixels; decompression bomb)") from None  # fmt: skip
    except Exception as exc:  # Pillow raises many kinds on malformed headers
        raise ValueError(f"cannot decode: {_reason(exc)}") from None
    layout = gif.layout(data, max_pixels, max_gif_frames) if image.format == "GIF" else None
    canvas = (0, 0) if layout is None else (layout.width, layout.height)  # NOTE: a later frame may widen it
    for width, height in (image.size, canvas):  # NOTE: from the headers, before any pixel is decoded
        if width * height > max_pixels:
            raise ValueError(f"{width}x{height} pixels is more than the limit of {max_pixels} "
                             "(setting max_image_pixels)")  # fmt: skip
    jpeg = image.format in ("JPEG", "MPO")
    if jpeg and max_jpeg_scans is not None and count_scans(data, max_jpeg_scans) > max_jpeg_scans:
        raise ValueError(f"JPEG of more than {max_jpeg_scans} scans (setting max_jpeg_scans; "
                         "a progressive-JPEG scan bomb)")  # fmt: skip
    if image.format == "BMP" and (problem := bmp.problem(data)):
        raise ValueError(f"unsupported BMP: {problem}; the model's predict_images signature reads only "
                         "uncompressed 8-bit grey, 24- and 32-bit BMPs (convert it to PNG)")  # fmt: skip
    return Opened(image, image.size[0] * image.size[1] + canvas[0] * canvas[1], layout)


def _not_allowed(data: bytes, allowed: Sequence[str]) -> str:
    """Why no ``allowed`` format opens ``data``: its format when the setting leaves it out."""
    left_out = [f for f in repo.IMAGE_FORMATS if f not in allowed]
    if left_out:
        with contextlib.suppress(Exception):
            found = Image.open(io.BytesIO(data), formats=left_out).format
            accepted = ", ".join(allowed)
            return f"a {found} image, which the setting allowed_image_formats leaves out ({accepted})"
    names = list(allowed)
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"not a {listed} image" + (" (setting allowed_image_formats)" if left_out else "")


def to_pixels(opened: Opened, height: int, width: int, jpeg_draft: int = 0) -> np.ndarray:
    """Decode an opened image -> float32 [height, width, 3], RGB 0..255; ValueError when corrupt.

    ``jpeg_draft`` > 0: a JPEG larger than that many times the model's input size is decoded at a
    reduced DCT scale (1/2, 1/4 or 1/8: libjpeg skips most of the inverse DCT and the colour
    conversion), keeping at least ``jpeg_draft`` times the input size in each dimension before the
    bilinear resize. At 4 the pixels stay within the JPEG parity of the serving contract (measured by
    tests/service/test_images.py on a 12-megapixel photo-like image); 0 decodes every pixel."""
    image = opened.image
    try:
        if jpeg_draft and image.format == "JPEG":
            side = jpeg_draft * max(height, width)  # NOTE: both ways: EXIF may rotate it by 90 degrees
            image.draft(image.mode, (side, side))
        image.load()
        pixels = _channels(_oriented(image)) if opened.gif is None else _gif_canvas(image, opened.gif)
    except Exception as exc:  # truncated or corrupt data
        raise ValueError(f"cannot decode: {_reason(exc)}") from None
    out = resize_bilinear(pixels, height, width)
    return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out


def _gif_canvas(image: Image.Image, layout: gif.Layout) -> np.ndarray:
    """uint8 [H, W, 3]: a loaded GIF's first frame on the signature's canvas (``gif``)."""
    canvas = np.zeros((layout.height, layout.width, 3), np.uint8)
    left, top, right, bottom = box = layout.visible()
    if right > left and bottom > top:
        frame = image.crop(box)  # NOTE: Pillow's first frame is palette indices (P, or L when grey)
        rgb = np.asarray(frame.convert("RGB"))
        transparent = image.info.get("transparency")
        if isinstance(transparent, int) and frame.mode in ("P", "L"):
            rgb = np.where((np.asarray(frame) == transparent)[:, :, None], np.uint8(0), rgb)
        canvas[top:bottom, left:right] = rgb
    return canvas


def decode(
    data: bytes, height: int, width: int, allowed: Sequence[str], max_pixels: int, jpeg_draft: int = 0
) -> np.ndarray:
    """One encoded image -> float32 [height, width, 3], RGB 0..255; ValueError says what is wrong."""
    return to_pixels(open_image(data, allowed, max_pixels), height, width, jpeg_draft)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def decode_batch(
    images: Sequence[bytes],
    height: int,
    width: int,
    allowed: Sequence[str],
    max_pixels: int,
    deadline: float | None = None,
    max_bytes: int | None = None,
    max_request_pixels: int | None = None,
    jpeg_draft: int = 0,
    max_jpeg_scans: int | None = None,
    max_gif_frames: int = gif.MAX_FRAMES,
) -> np.ndarray:
    """Encoded images -> float32 [N, height, width, 3]; InvalidArgument names the first bad index.
    Every header is read and checked (bytes, format, pixels, a JPEG's scans, a BMP's layout, a GIF's
    frames, and the request's pixel total) before any image is decoded. Stops with DeadlineExceeded
    between images once ``deadline`` (``time.monotonic()``) has passed."""
    opened = []
    total = 0
    for index, data in enumerate(images):
        try:
            image = open_image(data, allowed, max_pixels, max_bytes, max_jpeg_scans, max_gif_frames)
        except ValueError as exc:
            raise InvalidArgument(f"image {index}: {exc}") from None
        total += image.pixels
        if max_request_pixels is not None and total > max_request_pixels:
            raise InvalidArgument(
                f"images 0..{index} declare {total} pixels, more than the limit of {max_request_pixels} "
                "per request (setting max_request_pixels); send fewer or smaller images"
            )
        opened.append(image)
    out = np.empty((len(images), height, width, 3), dtype=np.float32)
    for index, image in enumerate(opened):
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(f"the deadline passed while decoding image {index} of {len(images)}")
        try:
            out[index] = to_pixels(image, height, width, jpeg_draft)
        except ValueError as exc:
            raise InvalidArgument(f"image {index}: {exc}") from None
        opened[index] = None  # type: ignore[call-overload]  # NOTE: free each decoded image at once
    return out
