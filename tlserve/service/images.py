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

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlserve.service.errors import InvalidArgument


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


def decode(data: bytes, height: int, width: int, allowed: Sequence[str], max_pixels: int) -> np.ndarray:
    """One encoded image -> float32 [height, width, 3], RGB 0..255; ValueError says what is wrong."""
    if not data:
        raise ValueError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=list(allowed))
            pixels = image.size[0] * image.size[1]
            if pixels > max_pixels:
                raise ValueError(
                    f"{image.size[0]}x{image.size[1]} pixels is more than the limit of {max_pixels}"
                )
            image = ImageOps.exif_transpose(image) or image
            rgb = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError(f"not a {' or '.join(allowed)} image") from None
    except (OSError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ValueError(
            f"cannot decode: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return resize_bilinear(rgb, height, width)


def decode_batch(
    images: Sequence[bytes], height: int, width: int, allowed: Sequence[str], max_pixels: int
) -> np.ndarray:
    """Encoded images -> float32 [N, height, width, 3]; InvalidArgument names the first bad index."""
    out = np.empty((len(images), height, width, 3), dtype=np.float32)
    for index, data in enumerate(images):
        try:
            out[index] = decode(data, height, width, allowed, max_pixels)
        except ValueError as exc:
            raise InvalidArgument(f"image {index}: {exc}") from None
    return out
