"""The demo's and the transfer benchmark's scenes: deterministic, varied, glyph visible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tlserve import scenes


def test_scenes_are_reproducible_from_their_seed() -> None:
    glyph = scenes.digit_glyphs()[3][0]
    first = scenes.scenes([glyph], 4, np.random.default_rng(7))
    again = scenes.scenes([glyph], 4, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in first)
    other = scenes.scenes([glyph], 4, np.random.default_rng(8))
    assert not np.array_equal(first[0], other[0])


def test_the_same_glyph_varies_in_colour_place_and_background() -> None:
    glyph = scenes.digit_glyphs()[5][0]
    images = np.stack(scenes.scenes([glyph], 32, np.random.default_rng(0))).astype(np.float32)
    means = images.mean(axis=(1, 2))  # one colour per scene
    assert means.std(axis=0).min() > 20  # backgrounds differ in every channel
    # the ink moves: the darkest/lightest pixel is not always in one place
    extremes = {int(np.abs(x - x.mean()).sum(axis=2).argmax()) for x in images}
    assert len(extremes) > 10


def test_the_glyph_stands_out_from_its_background() -> None:
    # a blank glyph gives the background alone; the digit must change the image clearly
    glyph = scenes.digit_glyphs()[8][0]
    for seed in range(8):
        with_ink = scenes.render(glyph, np.random.default_rng(seed)).astype(np.float32)
        blank = scenes.render(np.zeros_like(glyph), np.random.default_rng(seed)).astype(np.float32)
        assert np.abs(with_ink - blank).max() > 60


def test_digits_and_letters() -> None:
    digits = scenes.digit_glyphs()
    assert sorted(digits) == list(range(10))
    assert sum(len(v) for v in digits.values()) == 1797
    letters = scenes.letter_glyphs()
    assert len(letters) == 26 and all(g.max() > 0.9 for g in letters.values())
    assert not np.array_equal(letters["O"], letters["Q"])


def test_write_names_files_in_order(tmp_path: Path) -> None:
    images = scenes.scenes([scenes.letter_glyphs("A")["A"]], 3, np.random.default_rng(0))
    scenes.write(tmp_path / "letter_A", images)
    files = sorted(p.name for p in (tmp_path / "letter_A").iterdir())
    assert files == ["0000.png", "0001.png", "0002.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "letter_A" / "0001.png")), images[1])
