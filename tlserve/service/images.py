"""Encoded images -> float32 pixel batches, as the exporter's ``predict_images`` signature makes them.

The exported signature decodes with TensorFlow (RGB, first frame) and resizes with
``tf.image.resize(method="bilinear")``: half-pixel centres, no antialiasing, aspect ratio not kept.
Here Pillow decodes and ``resize_bilinear`` reimplements that resize in numpy, so serving needs no
TensorFlow. Differences from the signature, on purpose: EXIF orientation is applied (TensorFlow ignores
it), only ``allowed`` formats are accepted, and the pixel count is checked before decoding.
Parity with the signature is measured by tests/service/test_images.py (PNG: identical pixels; JPEG:
both use libjpeg, differing by at most a few levels on some pixels).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlserve.service.errors import DeadlineExceeded, InvalidArgument


def _axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source indices and the interpolation weight for each output index."""
    scale = in_size / out_size
    pos = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    floor = np.floor(pos)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.intp)
    return lower, upper, (pos - floor).astype(np.float32)


def resize_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.image.resize(pixels, (height, width), "bilinear")`` for one HxWxC image, as float32."""
    y0, y1, wy = _axis(pixels.shape[0], height)
    x0, x1, wx = _axis(pixels.shape[1], width)
    rows0 = pixels[y0].astype(np.float32)
    rows1 = pixels[y1].astype(np.float32)
    wx = wx[None, :, None]
    top = rows0[:, x0] + (rows0[:, x1] - rows0[:, x0]) * wx
    bottom = rows1[:, x0] + (rows1[:, x1] - rows1[:, x0]) * wx
    return top + (bottom - top) * wy[:, None, None]


def _rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: keep the high byte, as TF does
        high = (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(high[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def decode(data: bytes, height: int, width: int, allowed: Sequence[str], max_pixels: int) -> np.ndarray:
    """One encoded image -> float32 [height, width, 3], RGB 0..255; ValueError says what is wrong."""
    if not data:
        raise ValueError("empty image")
    try:
        image = Image.open(io.BytesIO(data), formats=list(allowed))
    except UnidentifiedImageError:
        raise ValueError(f"not a {' or '.join(allowed)} image") from None
    except Exception as exc:  # Pillow raises many kinds on malformed headers
        raise ValueError(f"cannot decode: {_reason(exc)}") from None
    pixels = image.size[0] * image.size[1]
    if pixels > max_pixels:  # NOTE: from the header, before any pixel is decoded
        raise ValueError(f"{image.size[0]}x{image.size[1]} pixels is more than the limit of {max_pixels}")
    try:
        image.load()
        upright: Image.Image = image
        with contextlib.suppress(Exception):  # malformed EXIF: serve the image as stored, not refuse it
            upright = ImageOps.exif_transpose(image) or image
        rgb = _rgb(upright)
    except Exception as exc:  # truncated or corrupt data
        raise ValueError(f"cannot decode: {_reason(exc)}") from None
    return resize_bilinear(rgb, height, width)


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
) -> np.ndarray:
    """Encoded images -> float32 [N, height, width, 3]; InvalidArgument names the first bad index.
    Stops with DeadlineExceeded between images once ``deadline`` (``time.monotonic()``) has passed."""
    out = np.empty((len(images), height, width, 3), dtype=np.float32)
    for index, data in enumerate(images):
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(f"the deadline passed while decoding image {index} of {len(images)}")
        try:
            out[index] = decode(data, height, width, allowed, max_pixels)
        except ValueError as exc:
            raise InvalidArgument(f"image {index}: {exc}") from None
    return out
