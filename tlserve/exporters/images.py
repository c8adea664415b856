"""The images an export is checked with: the run's own validation and training images.

run.json lists the validation files; the training files are the rest of the data dir. When the data
has moved, parity falls back to seeded random pixels (and int8 accuracy is not measured).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlserve.errors import UsageError
from tlserve.training.data import IMAGE_EXTENSIONS, Split, find_corrupt, image_dataset
from tlserve.training.rundir import RunRecord


@dataclass
class LabelledImages:
    pixels: np.ndarray
    """float32 [N, H, W, 3], RGB 0..255, decoded and resized as the trainer does."""
    labels: np.ndarray | None
    """Class indices, or None when the images are not the run's own."""
    files: list[Path]
    source: str


def load_pixels(paths: list[Path], size: int) -> np.ndarray:
    """Decode and resize ``paths`` (all must decode: filter with ``readable`` first)."""
    if not paths:
        return np.zeros((0, size, size, 3), np.float32)
    split = Split(paths=list(paths), labels=[0] * len(paths))
    batches = image_dataset(split, size, 32, shuffle=False, seed=0, cache=False)
    return np.concatenate([x.numpy() for x, _ in batches]).astype(np.float32)


def _val_files(run: RunRecord, labels: list[str]) -> tuple[list[Path], list[int]]:
    root = run.val_data_dir or run.data_dir
    if root is None:
        return [], []
    files, classes = [], []
    for rel in run.val_files:
        path = root / rel
        label = Path(rel).parts[0]
        if path.is_file() and label in labels:
            files.append(path)
            classes.append(labels.index(label))
    corrupt = find_corrupt(files)
    keep = [i for i, p in enumerate(files) if p not in corrupt]
    return [files[i] for i in keep], [classes[i] for i in keep]


def validation_images(run: RunRecord, labels: list[str], size: int, limit: int) -> LabelledImages | None:
    files, classes = _val_files(run, labels)
    if not files:
        return None
    rng = np.random.default_rng(0)
    if len(files) > limit:
        keep = np.sort(rng.choice(len(files), limit, replace=False))
        files, classes = [files[i] for i in keep], [classes[i] for i in keep]
    return LabelledImages(load_pixels(files, size), np.asarray(classes), files, "the run's validation images")


def parity_images(
    validation: LabelledImages | None, size: int, minimum: int, maximum: int = 256
) -> LabelledImages:
    """Up to ``maximum`` validation images, topped up with seeded random pixels to ``minimum``."""
    rng = np.random.default_rng(1)
    have = validation.pixels[:maximum] if validation is not None else np.zeros((0, size, size, 3), np.float32)
    missing = max(0, minimum - len(have))
    extra = rng.uniform(0, 255, (missing, size, size, 3)).astype(np.float32)
    source = validation.source if validation is not None else "seeded random pixels"
    if validation is not None and missing:
        source += f" + {missing} seeded random images"
    files = validation.files[:maximum] if validation is not None else []
    return LabelledImages(np.concatenate([have, extra]), None, files, source)


def image_files(root: Path) -> list[Path]:
    """Image files below ``root`` that decode."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    corrupt = find_corrupt(files)
    return [p for p in files if p not in corrupt]


def training_files(run: RunRecord, data_dir: Path) -> list[Path]:
    """The run's training images: those below ``data_dir`` that decode, minus the validation ones."""
    # val_files are relative to the val dir; only a --val-split run took them out of data_dir
    held_out = set() if run.val_data_dir else {data_dir / r for r in run.val_files}
    return [p for p in image_files(data_dir) if p not in held_out]


def training_sample(run: RunRecord, labels: list[str], limit: int) -> tuple[Split, list[int]] | None:
    """A seeded sample of at most ``limit`` of the run's training images with their classes (the
    first folder below the data dir), and every training image counted per class; None when the
    training data is gone or holds none of the labels."""
    data_dir = run.data_dir
    if data_dir is None or not data_dir.is_dir():
        return None
    files, classes = [], []
    for path in training_files(run, data_dir):
        label = path.relative_to(data_dir).parts[0]
        if label in labels:
            files.append(path)
            classes.append(labels.index(label))
    if not files:
        return None
    counts = [classes.count(i) for i in range(len(labels))]
    if len(files) > limit:
        # NOTE: per class, as evenly as the counts allow (a small class keeps all of its images): a
        # uniform draw would leave a rare class a handful of images to estimate its spread from
        quota = _shares(counts, limit)
        rng = np.random.default_rng(4)
        keep: list[int] = []
        for index, share in enumerate(quota):
            members = [i for i, c in enumerate(classes) if c == index]
            keep += rng.choice(members, share, replace=False).tolist() if share < len(members) else members
        keep.sort()
        files, classes = [files[i] for i in keep], [classes[i] for i in keep]
    return Split(paths=files, labels=classes), counts


def _shares(counts: list[int], limit: int) -> list[int]:
    """How many of each class's ``counts`` images to keep, ``limit`` in all: an equal share each,
    what a small class cannot use shared among the others."""
    shares = [0] * len(counts)
    open_classes = [i for i, c in enumerate(counts) if c > 0]
    left = limit
    while open_classes and left > 0:
        each = max(left // len(open_classes), 1)
        for i in list(open_classes):
            take = min(each, counts[i] - shares[i], left)
            shares[i] += take
            left -= take
            if shares[i] == counts[i]:
                open_classes.remove(i)
            if left == 0:
                break
    return shares


def batches(split: Split, size: int, batch: int) -> Iterator[np.ndarray]:
    """``split``'s images decoded and resized as the trainer does, ``batch`` at a time (float32
    RGB 0..255), without holding them all."""
    for x, _ in image_dataset(split, size, batch, shuffle=False, seed=0, cache=False):
        yield x.numpy().astype(np.float32)


def calibration_images(run: RunRecord, calibration_dir: Path | None, size: int, limit: int) -> LabelledImages:
    """``--calibration-data`` if given, else the run's training images (data dir minus validation)."""
    if calibration_dir is not None:
        if not calibration_dir.is_dir():
            raise UsageError(f"--calibration-data {calibration_dir} is not a directory")
        files = image_files(calibration_dir)
        if not files:
            raise UsageError(
                f"--calibration-data {calibration_dir} holds no images "
                f"({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}, searched recursively)"
            )
        source = str(calibration_dir)
    else:
        data_dir = run.data_dir
        if data_dir is None:
            raise UsageError(f"{run.file} names no training data; pass --calibration-data DIR for int8")
        if not data_dir.is_dir():
            raise UsageError(
                f"the run's training data {data_dir} is gone; pass --calibration-data DIR for int8"
            )
        files = training_files(run, data_dir)
        if not files:
            raise UsageError(f"no training images left in {data_dir}; pass --calibration-data DIR for int8")
        source = f"the run's training images ({data_dir})"
    rng = np.random.default_rng(2)
    if len(files) > limit:
        files = [files[i] for i in np.sort(rng.choice(len(files), limit, replace=False))]
    return LabelledImages(load_pixels(files, size), None, files, source)
