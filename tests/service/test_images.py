"""Pillow decoding + numpy resize against the exporter's predict_images signature (TensorFlow)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import COLORS, make_image
from tlserve.service.errors import InvalidArgument
from tlserve.service.images import decode, decode_batch, resize_bilinear

ALLOWED = ["JPEG", "PNG"]
# Stated tolerance of the serving contract for JPEG: libjpeg builds and settings differ between
# TensorFlow and Pillow, so a decoded pixel may differ by a few levels; PNG is lossless and identical.
JPEG_MAX_LEVELS = 12.0
JPEG_MEAN_LEVELS = 1.5


def save(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def tf_reference(data: bytes, height: int, width: int) -> np.ndarray:
    """What the exported predict_images signature does (tlserve.training.data.decode + resize)."""
    from tlserve.training.data import RESIZE_METHOD
    from tlserve.training.data import decode as tf_decode

    return tf.image.resize(tf_decode(data), (height, width), method=RESIZE_METHOD).numpy()


@pytest.mark.parametrize(
    "shape", [(36, 36, 32, 32), (10, 17, 32, 32), (480, 640, 224, 224), (50, 30, 50, 30), (7, 3, 2, 5)]
)
def test_resize_is_tensorflows_bilinear(shape: tuple[int, int, int, int]) -> None:
    h, w, oh, ow = shape
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    expected = tf.image.resize(pixels, (oh, ow), method="bilinear").numpy()
    np.testing.assert_allclose(resize_bilinear(pixels, oh, ow), expected, atol=2e-2)


@pytest.mark.parametrize(("h", "w"), [(5000, 1), (1, 5000), (3, 4000), (3000, 4000)])
def test_resize_of_extreme_aspect_ratios_is_tensorflows_bilinear(h: int, w: int) -> None:
    """Shrinking 20 times or more too (source positions in float64 were up to 0.06 levels off)."""
    pixels = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    expected = tf.image.resize(pixels, (224, 224), method="bilinear").numpy()
    np.testing.assert_allclose(resize_bilinear(pixels, 224, 224), expected, atol=1e-3)


@pytest.mark.parametrize(("h", "w"), [(250_000, 1), (1, 250_000)])
def test_resize_memory_is_of_the_output_size_whatever_the_source(h: int, w: int) -> None:
    """An 807-byte PNG of 250000x1 pixels used to cost [224, 250000, 3] float32 rows (670 MB each)."""
    import tracemalloc

    pixels = np.zeros((h, w, 3), np.uint8)
    tracemalloc.start()
    try:
        out = resize_bilinear(pixels, 224, 224)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (224, 224, 3)
    assert peak < 8 * out.nbytes, f"{peak / 1e6:.1f} MB for a {out.nbytes / 1e6:.1f} MB output"


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_png_decodes_exactly_as_the_signature(mode: str) -> None:
    image = make_image(COLORS["green"], np.random.default_rng(1), 40).convert(mode)
    data = save(image, "PNG")
    np.testing.assert_allclose(decode(data, 32, 32, ALLOWED, 10**6), tf_reference(data, 32, 32), atol=2e-2)


def test_jpeg_is_within_the_stated_tolerance() -> None:
    image = make_image(COLORS["red"], np.random.default_rng(2), 300)
    data = save(image, "JPEG", quality=90)
    diff = np.abs(decode(data, 224, 224, ALLOWED, 10**6) - tf_reference(data, 224, 224))
    assert diff.max() <= JPEG_MAX_LEVELS and diff.mean() <= JPEG_MEAN_LEVELS, (diff.max(), diff.mean())


def photo_like_jpeg(width: int, height: int) -> bytes:
    """A photo-like JPEG of any size: scikit-learn's sample photograph, enlarged (smooth, as camera
    images are at the pixel level) with a little sensor-like noise (sigma 3 levels), quality 90."""
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg")).resize((width, height), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 3, (height, width, 3))
    return save(
        Image.fromarray((np.asarray(photo) + noise).clip(0, 255).astype(np.uint8)), "JPEG", quality=90
    )


def test_the_fast_jpeg_path_keeps_the_jpeg_parity_on_a_12_megapixel_photo() -> None:
    data = photo_like_jpeg(4000, 3000)
    fast = decode(data, 224, 224, ALLOWED, 10**8, jpeg_draft=4)
    full = decode(data, 224, 224, ALLOWED, 10**8, jpeg_draft=0)
    assert np.abs(fast - full).max() > 0  # the reduced DCT scale was used
    diff = np.abs(fast - tf_reference(data, 224, 224))
    assert diff.max() <= JPEG_MAX_LEVELS and diff.mean() <= JPEG_MEAN_LEVELS, (diff.max(), diff.mean())


def test_the_fast_jpeg_path_leaves_small_jpegs_and_pngs_alone() -> None:
    jpeg = photo_like_jpeg(640, 480)  # under 4x 224 in height: nothing to skip
    assert np.array_equal(
        decode(jpeg, 224, 224, ALLOWED, 10**8, 4), decode(jpeg, 224, 224, ALLOWED, 10**8, 0)
    )
    png = save(Image.open(io.BytesIO(photo_like_jpeg(2000, 1500))), "PNG")
    assert np.array_equal(decode(png, 224, 224, ALLOWED, 10**8, 4), decode(png, 224, 224, ALLOWED, 10**8, 0))


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = save(Image.fromarray(pixels), "PNG", exif=exif)
    decoded = decode(data, 20, 10, ALLOWED, 10**6)
    np.testing.assert_array_equal(decoded, np.rot90(pixels, k=-1).astype(np.float32))


@pytest.mark.parametrize(
    ("data", "allowed", "message"),
    [
        (b"", ALLOWED, "empty image"),
        (b"plain text", ALLOWED, "not a JPEG or PNG image"),
        (save(Image.new("RGB", (8, 8)), "GIF"), ALLOWED, "not a JPEG or PNG image"),
        (save(Image.new("RGB", (64, 64)), "PNG"), ALLOWED, "more than the limit of 1000"),
        (
            save(make_image(COLORS["red"], np.random.default_rng(0), 64), "JPEG")[:300],
            ALLOWED,
            "cannot decode",
        ),
    ],
    ids=["empty", "junk", "format not allowed", "too many pixels", "truncated jpeg"],
)
def test_bad_images_say_what_is_wrong(data: bytes, allowed: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(data, 8, 8, allowed, 1000)


def test_allowed_formats_are_a_setting() -> None:
    data = save(Image.new("RGB", (8, 8), (0, 255, 0)), "GIF")
    assert decode(data, 4, 4, ["GIF"], 1000)[0, 0].tolist() == [0, 255, 0]


def test_batch_errors_name_the_image() -> None:
    good = save(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(InvalidArgument, match="image 2: not a JPEG or PNG image"):
        decode_batch([good, good, b"junk"], 8, 8, ALLOWED, 1000)


def test_served_probabilities_match_the_savedmodel_signature(exported: Any, tmp_path: Any) -> None:
    """End to end: the exported model's ONNX behind the server's decoding vs the SavedModel's own
    predict_images on the same encoded images."""
    from tlserve import repository as repo
    from tlserve.service.backends.onnx import OnnxBackend
    from tlserve.service.settings import ServerSettings

    manifest = repo.Manifest.read(exported.path)
    settings = ServerSettings(repository=exported.path.parent.parent, precision="fp32")
    backend = OnnxBackend(exported.path, manifest, settings, settings.for_model(manifest.name))
    backend.load()
    rng = np.random.default_rng(3)
    images = {fmt: [save(make_image(c, rng, 48), fmt) for c in COLORS.values()] for fmt in ("PNG", "JPEG")}
    signature = tf.saved_model.load(str(exported.path)).signatures["predict_images"]
    height, width = manifest.image_size
    for fmt, encoded in images.items():
        served = backend.predict(decode_batch(encoded, height, width, ALLOWED, 10**6))
        reference = signature(images=tf.constant(encoded))["probabilities"].numpy()
        assert (served.argmax(1) == reference.argmax(1)).all()
        np.testing.assert_allclose(served, reference, atol=1e-4 if fmt == "PNG" else 2e-2)


def test_16_bit_grayscale_png_as_the_signature() -> None:
    values = np.array([[0, 255, 256, 1000], [32768, 40000, 65280, 65535]], np.uint16)
    data = save(Image.fromarray(values), "PNG")
    np.testing.assert_array_equal(decode(data, 2, 4, ALLOWED, 1000), tf_reference(data, 2, 4))


def test_malformed_exif_is_ignored_not_an_error() -> None:
    from pathlib import Path

    data = (Path(__file__).parent / "data" / "malformed_exif.jpg").read_bytes()  # a fuzzed JPEG
    assert decode(data, 8, 8, ALLOWED, 10**6).shape == (8, 8, 3)


def test_decoding_stops_at_the_deadline() -> None:
    import time

    from tlserve.service.errors import DeadlineExceeded

    good = save(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(DeadlineExceeded, match="decoding image 0 of 2"):
        decode_batch([good, good], 8, 8, ALLOWED, 1000, deadline=time.monotonic() - 1)
