"""Random transforms of training images, chosen by name (``--augment flip,rotate,zoom``).

Which transforms are right depends on the data: a horizontal flip or a large rotation is harmless
for photos of animals and wrong for digits, text, or anything with a handedness; so they are named
one by one, the run report lists those used, and ``none`` turns them off.
"""

from __future__ import annotations

from typing import Any

from tlserve.errors import UsageError

AUGMENTATIONS: dict[str, str] = {
    "flip": "random horizontal flip (wrong for text, digits and anything with a handedness)",
    "rotate": "random rotation up to ±18° (5 % of a turn)",
    "zoom": "random zoom in or out up to 10 %",
    "translate": "random shift up to 10 % of the width and height",
    "contrast": "random contrast change up to 20 %",
    "brightness": "random brightness change up to 20 %",
}
DEFAULT_AUGMENT: tuple[str, ...] = ("rotate", "zoom", "translate")
"""Transforms that keep the meaning of almost any image: no flip (see docs/training.md)."""


def parse(text: str) -> tuple[str, ...]:
    """``flip,zoom`` -> ("flip", "zoom"); ``none`` -> (); ``default`` -> DEFAULT_AUGMENT."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names in (["none"], ["off"]):
        return ()
    if names == ["default"]:
        return DEFAULT_AUGMENT
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown or not names:
        raise UsageError(
            f"--augment {text!r}: expected none, default, or a comma-separated list of "
            f"{', '.join(AUGMENTATIONS)}"
        )
    return tuple(dict.fromkeys(names))


def build(names: tuple[str, ...], seed: int) -> Any:
    """A Keras layer applying ``names`` in a fixed order, or None for no augmentation."""
    if not names:
        return None
    import keras

    layers = {
        "flip": lambda s: keras.layers.RandomFlip("horizontal", seed=s),
        "rotate": lambda s: keras.layers.RandomRotation(0.05, seed=s),
        "zoom": lambda s: keras.layers.RandomZoom(0.1, seed=s),
        "translate": lambda s: keras.layers.RandomTranslation(0.1, 0.1, seed=s),
        "contrast": lambda s: keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=s),
        "brightness": lambda s: keras.layers.RandomBrightness(0.2, value_range=(0, 255), seed=s),
    }
    chosen = [layers[name](seed + i) for i, name in enumerate(AUGMENTATIONS) if name in names]
    return keras.Sequential(chosen, name="augmentation")
