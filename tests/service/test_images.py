"""Pillow decoding + numpy resize against the exporter's predict_images signature (TensorFlow)."""

from __future__ import annotations

import io
import re
import struct
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import COLORS, make_image
from tests.service import bombs
from tests.service.images import bmp_file, gif_file
from tlserve import repository as repo
from tlserve.service.errors import InvalidArgument
from tlserve.service.images import decode, decode_batch, resize_bilinear
from tlserve.service.settings import ServerSettings

ALLOWED = ["JPEG", "PNG"]
ALL = list(repo.IMAGE_FORMATS)
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


def tf_decoded(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] as the signature decodes ``data`` (before its resize); raises when it cannot."""
    from tlserve.training.data import decode as tf_decode

    return tf_decode(data).numpy()


def served_at_tf_size(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(the server's pixels, the signature's) at the size TensorFlow decodes ``data`` to: the resize
    is then the identity, so the two decoders are compared pixel for pixel."""
    reference = tf_decoded(data).astype(np.float32)
    height, width = reference.shape[:2]
    return decode(data, height, width, ALL, 10**6), reference


RNG = np.random.default_rng(7)
NOISE = make_image(COLORS["blue"], RNG, 37).resize((37, 23))  # NOTE: odd widths: BMP rows are padded
PIXELS = np.asarray(NOISE)


def top_down(data: bytes, height: int) -> bytes:
    """A bottom-up BMP as the same image stored top-down (negative height, rows reversed)."""
    offset = int.from_bytes(data[10:14], "little")
    row = (len(data) - offset) // height
    rows = [data[offset + i * row : offset + (i + 1) * row] for i in range(height)]
    header = data[:22] + struct.pack("<i", -height) + data[26:offset]
    return header + b"".join(reversed(rows))


GREY_PALETTE = b"".join(bytes((i, i, i, 0)) for i in range(256))


def grey_bmp(entries: int, used: int) -> bytes:
    """An 8-bit BMP of NOISE's red channel (values up to 255) after ``entries`` grey palette entries,
    declaring ``used`` entries."""
    rows = [bytes(r) + b"\0" * 3 for r in PIXELS[::-1, :, 0]]
    return bmp_file(rows, 37, 23, 8, palette=GREY_PALETTE[: 4 * entries], used=used)


BMPS = {
    "24-bit": save(NOISE, "BMP"),
    "24-bit top-down": top_down(save(NOISE, "BMP"), 23),
    "32-bit": save(NOISE.convert("RGBA"), "BMP"),
    "32-bit, no masks": bmp_file([np.concatenate([r[:, ::-1], np.full((37, 1), 9, np.uint8)], 1).tobytes()
                                  for r in PIXELS[::-1]], 37, 23, 32),
    "8-bit grey": save(NOISE.convert("L"), "BMP"),
    "8-bit grey, 16 entries, pixels above them": grey_bmp(16, 16),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BMPS))
def test_bmp_decodes_exactly_as_the_signature(case: str) -> None:
    served, reference = served_at_tf_size(BMPS[case])
    np.testing.assert_array_equal(served, reference)
    data = BMPS[case]
    np.testing.assert_allclose(decode(data, 32, 32, ALL, 10**6), tf_reference(data, 32, 32), atol=2e-2)


def rle8(pixels: np.ndarray) -> bytes:
    rows = [b"".join(bytes((1, v)) for v in row) + b"\0\0" for row in pixels[::-1]]
    return bmp_file(
        [*rows, b"\0\1"], pixels.shape[1], pixels.shape[0], 8, compression=1, palette=GREY_PALETTE
    )


def rgb555(pixels: np.ndarray) -> bytes:
    values = (pixels.astype(np.uint16) >> 3) << np.array([10, 5, 0], np.uint16)
    rows = [row.sum(axis=1, dtype=np.uint16).astype("<u2").tobytes() + b"\0\0" for row in values[::-1]]
    return bmp_file(rows, pixels.shape[1], pixels.shape[0], 16)


REFUSED_BMPS = {
    "1-bit": (save(NOISE.convert("1"), "BMP"), "a 1-bit BMP"),
    "colour palette": (save(NOISE.convert("P"), "BMP"), "an 8-bit BMP with a colour palette"),
    # NOTE: Pillow reads 256 entries (used = 0) from after the header: 16 grey, then pixels
    "16 grey entries, used = 0": (grey_bmp(16, 0), "an 8-bit BMP whose palette of 256 entries does not fit"),
    "used = 300": (grey_bmp(256, 300), "an 8-bit BMP of 300 palette entries (at most 256)"),
    "two entries": (grey_bmp(2, 2), "an 8-bit BMP of 2 palette entries"),
    "16-bit": (rgb555(PIXELS), "a 16-bit BMP"),
    "RLE8": (rle8(PIXELS[:, :, 0]), "a compressed BMP (compression 1)"),
    "trailing bytes": (
        save(NOISE, "BMP") + b"\0" * 4,
        "a BMP of 2634 bytes, not the 2630 its header declares",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_BMPS))
def test_bmps_the_signature_reads_otherwise_are_refused(case: str) -> None:
    """Refused exactly where the signature does not read the BMP as Pillow does (it fails, or its
    pixels differ); the message says what the BMP is."""
    data, message = REFUSED_BMPS[case]
    try:
        pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        differs = not np.array_equal(tf_decoded(data), pillow)
    except (tf.errors.InvalidArgumentError, ValueError):  # NOTE: Pillow: "bytes must be in range(0, 256)"
        differs = True
    assert differs
    with pytest.raises(ValueError, match=rf"unsupported BMP: {re.escape(message)}.*convert it to PNG"):
        decode(data, 8, 8, ALL, 10**6)


def frame(seed: int, size: tuple[int, int], colors: int = 64) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).quantize(colors)


def with_hole(image: Image.Image) -> Image.Image:
    """RGBA with a transparent corner (Pillow saves it as a GIF with a transparent index)."""
    pixels = np.asarray(image.convert("RGBA")).copy()
    pixels[:5, :7, 3] = 0
    return Image.fromarray(pixels)


GIFS = {
    "palette": save(frame(1, (37, 23)), "GIF"),
    "grey": save(NOISE.convert("L"), "GIF"),
    "from RGB": save(NOISE, "GIF"),
    "interlaced": save(frame(2, (37, 23)), "GIF", interlace=True),
    "transparent": save(with_hole(NOISE), "GIF"),
    "animated: the first frame": save(frame(3, (20, 20)), "GIF", save_all=True,
                                      append_images=[frame(4, (20, 20))]),
    "first frame offset in a larger screen": gif_file((40, 40), [(frame(5, (20, 12)), 10, 6)]),
    "first frame at the origin of a larger screen": gif_file((40, 30), [(frame(6, (20, 12)), 0, 0)]),
    "a later frame wider than the first": gif_file((30, 20), [(frame(7, (20, 12)), 0, 0),
                                                               (frame(8, (30, 8)), 0, 12)]),
    "first frame cut by the canvas": gif_file((30, 30), [(frame(9, (20, 20)), 5, 5)]),
    "transparent, offset": gif_file((30, 30), [(with_hole(frame(10, (16, 16))), 3, 2)]),
    "animated, 12 frames, the last the highest": gif_file(
        (24, 24), [(frame(20 + i, (8 + i, 4 + i)), i, i) for i in range(11)] + [(frame(31, (6, 30)), 0, 0)]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GIFS))
def test_gif_decodes_exactly_as_the_signature(case: str) -> None:
    """The first frame, on TensorFlow's canvas (the largest frame's width and height, not the logical
    screen), transparent and uncovered pixels black."""
    served, reference = served_at_tf_size(GIFS[case])
    np.testing.assert_array_equal(served, reference)
    data = GIFS[case]
    np.testing.assert_allclose(decode(data, 32, 32, ALL, 10**6), tf_reference(data, 32, 32), atol=2e-2)


def test_the_gif_cases_are_not_all_what_pillow_shows() -> None:
    """The canvas and transparency rules are exercised: Pillow's own RGB picture differs in these."""
    for case in (
        "transparent",
        "first frame offset in a larger screen",
        "a later frame wider than the first",
    ):
        pillow = np.asarray(Image.open(io.BytesIO(GIFS[case])).convert("RGB"))
        reference = tf_decoded(GIFS[case])
        assert pillow.shape != reference.shape or not np.array_equal(pillow, reference), case


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
        (b"", ALL, "empty image"),
        (b"plain text", ALL, "^not a JPEG, PNG, BMP or GIF image$"),
        (b"plain text", ALLOWED, r"^not a JPEG or PNG image \(setting allowed_image_formats\)$"),
        (save(Image.new("RGB", (8, 8)), "GIF"), ALLOWED,
         r"^a GIF image, which the setting allowed_image_formats leaves out \(JPEG, PNG\)$"),
        (save(Image.new("RGB", (8, 8)), "BMP"), ["PNG"],
         r"^a BMP image, which the setting allowed_image_formats leaves out \(PNG\)$"),
        (save(Image.new("RGB", (64, 64)), "PNG"), ALL, "more than the limit of 1000"),
        (save(make_image(COLORS["red"], np.random.default_rng(0), 64), "JPEG")[:300], ALL, "cannot decode"),
    ],
    ids=["empty", "junk", "junk, narrowed", "GIF not allowed", "BMP not allowed", "too many pixels",
         "truncated jpeg"],
)  # fmt: skip
def test_bad_images_say_what_is_wrong(data: bytes, allowed: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(data, 8, 8, allowed, 1000)


def test_allowed_formats_are_a_setting() -> None:
    data = save(Image.new("RGB", (8, 8), (0, 255, 0)), "GIF")
    assert decode(data, 4, 4, ["GIF"], 1000)[0, 0].tolist() == [0, 255, 0]


PILLOWS_CHECK = "declares 400,000,000 pixels, more than the limit of 1000000 (setting max_image_pixels"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bombs.bmp_bomb(20000, 20000), PILLOWS_CHECK),
        (bombs.gif_bomb((20000, 20000), (1, 1)), PILLOWS_CHECK),
        (bombs.gif_bomb((1, 1), (30000, 30000)), "30000x30000 pixels is more than the limit of 1000000"),
    ],
    ids=["BMP", "GIF screen", "GIF canvas of a later frame"],
)
def test_bmp_and_gif_bombs_are_refused_from_their_headers(data: bytes, message: str) -> None:
    """Their headers declare more pixels than the limit (their pixel data is not even there: decoding
    would fail otherwise); refused before anything is decoded, as PNG bombs are."""
    with pytest.raises(ValueError, match=re.escape(message)):
        decode(data, 8, 8, ALL, 10**6)
    with pytest.raises(InvalidArgument, match=r"image 1: .* more than the limit of 1000000"):
        decode_batch([save(Image.new("RGB", (8, 8)), "GIF"), data], 8, 8, ALL, 10**6)


def test_a_gif_canvas_counts_in_the_request_pixels() -> None:
    """With Pillow's image: decoding holds both (4x4 + 400x4 each here)."""
    wide = gif_file((4, 4), [(frame(1, (4, 4)), 0, 0), (frame(2, (400, 4)), 0, 0)])
    assert Image.open(io.BytesIO(wide)).size == (4, 4)  # Pillow sees only the first frame's screen
    with pytest.raises(InvalidArgument, match=r"images 0\.\.1 declare 3232 pixels"):
        decode_batch([wide, wide], 8, 8, ALL, 10**6, max_request_pixels=3000)


def test_gifs_of_more_frames_than_the_setting_are_refused() -> None:
    """Every frame is read before decoding (the canvas is the largest frame's): 20 MiB of one-pixel
    frames is 1.4 million of them, refused at the first over the limit."""
    default = ServerSettings.model_fields["max_gif_frames"].default
    bomb = bombs.gif_frame_bomb((20 << 20) // 15)
    message = rf"^image 1: GIF of more than {default} frames \(setting max_gif_frames; "
    with pytest.raises(InvalidArgument, match=message):
        decode_batch([GIFS["palette"], bomb], 8, 8, ALL, 10**6)
    assert decode_batch([bombs.gif_frame_bomb(default)], 8, 8, ALL, 10**6).shape == (1, 8, 8, 3)
    animated = GIFS["animated, 12 frames, the last the highest"]
    assert decode_batch([animated], 8, 8, ALL, 10**6, max_gif_frames=12).shape == (1, 8, 8, 3)
    with pytest.raises(InvalidArgument, match=r"GIF of more than 11 frames \(setting max_gif_frames"):
        decode_batch([animated], 8, 8, ALL, 10**6, max_gif_frames=11)


def test_a_gif_canvas_over_the_limit_ends_the_walk() -> None:
    """The frames after the one that makes the canvas too large are not counted."""
    huge = b"\x2c" + struct.pack("<4HB", 0, 0, 30000, 30000, 0) + b"\x02\x01\x2c\x00"
    data = bombs.GIF_HEADER + bombs.ONE_PIXEL + huge + bombs.ONE_PIXEL * 5000 + b"\x3b"
    with pytest.raises(ValueError, match="30000x30000 pixels is more than the limit of 1000000"):
        decode(data, 8, 8, ALL, 10**6)


@pytest.mark.parametrize("block", ["extensions", "sub-blocks"])
def test_gifs_of_countless_tiny_blocks_are_refused(block: str) -> None:
    """Empty extensions or 1-byte data sub-blocks: the walk reads at most one block per 64 bytes
    (and 65,536 in any file) instead of a Python step per 2-3 bytes."""
    bomb = bombs.gif_block_bomb(20 << 20, block)
    with pytest.raises(InvalidArgument, match=rf"^image 0: GIF of more than {(20 << 20) // 64} blocks in "):
        decode_batch([bomb], 8, 8, ALL, 10**6)
    small = bombs.gif_block_bomb(60_000, block)  # NOTE: fewer blocks than the floor: served
    assert decode_batch([small], 8, 8, ALL, 10**6).shape == (1, 8, 8, 3)


def test_batch_errors_name_the_image() -> None:
    good = save(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(InvalidArgument, match="image 2: not a JPEG, PNG, BMP or GIF image"):
        decode_batch([good, good, b"junk"], 8, 8, ALL, 1000)


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
    images = {fmt: [save(make_image(c, rng, 48), fmt) for c in COLORS.values()] for fmt in repo.IMAGE_FORMATS}
    signature = tf.saved_model.load(str(exported.path)).signatures["predict_images"]
    height, width = manifest.image_size
    for fmt, encoded in images.items():
        served = backend.predict(decode_batch(encoded, height, width, ALL, 10**6))
        reference = signature(images=tf.constant(encoded))["probabilities"].numpy()
        assert (served.argmax(1) == reference.argmax(1)).all()
        np.testing.assert_allclose(served, reference, atol=2e-2 if fmt == "JPEG" else 1e-4)


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
