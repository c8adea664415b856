from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_folder
from tlserve.errors import UsageError
from tlserve.training.data import find_corrupt, image_dataset, list_classes, plan_dataset


def test_every_format_decodes_to_rgb(image_folder: Path) -> None:
    plan = plan_dataset(image_folder, 0.25, None, seed=1)
    assert plan.corrupt == []
    ds = image_dataset(plan.train, 32, 4, shuffle=False, seed=0)
    shapes = {tuple(x.shape[1:]) for x, _ in ds}
    assert shapes == {(32, 32, 3)}
    images = np.concatenate([x.numpy() for x, _ in ds])
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 255
    # gray and RGBA images became three real channels: a red image stays red
    red = np.concatenate([x.numpy()[y.numpy() == 2] for x, y in ds])  # sorted: blue, green, red
    assert plan.class_names == ["blue", "green", "red"]
    assert red[..., 0].mean() > red[..., 2].mean() + 50


def test_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", per_class=10)
    a = plan_dataset(root, 0.3, None, seed=7)
    b = plan_dataset(root, 0.3, None, seed=7)
    c = plan_dataset(root, 0.3, None, seed=8)
    assert a.val.counts(3) == [3, 3, 3] and a.train.counts(3) == [7, 7, 7]
    assert a.val.paths == b.val.paths
    assert a.val.paths != c.val.paths
    assert not set(a.val.paths) & set(a.train.paths)


def test_non_images_skipped_and_corrupt_listed(image_folder: Path) -> None:
    (image_folder / "red" / "notes.txt").write_text("not an image")
    (image_folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = (image_folder / "green" / "img_000.png").read_bytes()
    (image_folder / "green" / "half.png").write_bytes(good[: len(good) // 2])
    (image_folder / "blue" / "empty.gif").write_bytes(b"")
    plan = plan_dataset(image_folder, 0.25, None, seed=0)
    assert plan.skipped == ["red/notes.txt"]
    assert plan.corrupt == ["blue/empty.gif", "green/half.png", "red/broken.jpg"]
    used = {p.name for p in plan.train.paths + plan.val.paths}
    assert not used & {"broken.jpg", "half.png", "empty.gif", "notes.txt"}
    assert len(plan.train) + len(plan.val) == 24
    assert plan.summary()["corrupt_images"] == 3


def test_find_corrupt_on_valid_files_is_empty(image_folder: Path) -> None:
    _, files, _ = list_classes(image_folder)
    assert find_corrupt([p for v in files.values() for p in v]) == set()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "has no class folders"),
        (lambda root: write_folder(root, classes={"only": (1, 2, 3)}), "single class"),
    ],
)
def test_bad_data_dirs(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(UsageError, match=message):
        plan_dataset(root, 0.2, None, seed=0)


def test_class_without_readable_image(image_folder: Path) -> None:
    (image_folder / "empty_class").mkdir()
    (image_folder / "empty_class" / "readme.md").write_text("x")
    with pytest.raises(UsageError, match=r"no readable image.*empty_class"):
        plan_dataset(image_folder, 0.2, None, seed=0)


def test_val_data_with_unknown_class(image_folder: Path, tmp_path: Path) -> None:
    val = write_folder(tmp_path / "val", per_class=2, classes={"red": (200, 0, 0), "purple": (90, 0, 90)})
    with pytest.raises(UsageError, match="not in the training data: purple"):
        plan_dataset(image_folder, 0.2, val, seed=0)


def test_val_split_bounds(image_folder: Path) -> None:
    with pytest.raises(UsageError, match="--val-split"):
        plan_dataset(image_folder, 1.0, None, seed=0)


def test_bmps_tensorflow_would_misread_are_skipped_with_the_reason(image_folder: Path) -> None:
    from PIL import Image

    red = image_folder / "red"
    Image.new("RGB", (8, 8), (200, 40, 40)).convert("P", palette=Image.Palette.ADAPTIVE).save(red / "pal.bmp")
    Image.new("1", (8, 8), 1).save(red / "bw.bmp")
    Image.new("L", (8, 8), 90).save(red / "gray.bmp")  # grey ramp palette: decoded right
    plan = plan_dataset(image_folder, 0.25, None, seed=0)
    assert plan.skipped == [
        "red/bw.bmp (unsupported: 1-bit BMP; convert to PNG)",
        "red/pal.bmp (unsupported: colour-palette BMP; convert to PNG)",
    ]
    assert any(p.name == "gray.bmp" for p in plan.train.paths + plan.val.paths)


def test_uppercase_extensions_and_unicode_class_names(tmp_path: Path) -> None:
    root = write_folder(
        tmp_path / "d", per_class=4, classes={"ours é 🐻": (120, 60, 20), "b c": (1, 90, 200)}
    )
    for path in list((root / "b c").iterdir()):
        path.rename(path.with_suffix(path.suffix.upper()))
    plan = plan_dataset(root, 0.25, None, seed=0)
    assert plan.class_names == ["b c", "ours é 🐻"]
    assert len(plan.train) + len(plan.val) == 8 and plan.skipped == []


def test_class_names_must_be_one_line(image_folder: Path) -> None:
    (image_folder / "red").rename(image_folder / "re\u2028d")
    with pytest.raises(UsageError, match="one line"):
        plan_dataset(image_folder, 0.2, None, seed=0)
