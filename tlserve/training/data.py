"""Image folders -> a checked, stratified split -> tf.data pipelines.

DATA_DIR holds one subfolder per class (nested folders are walked). JPEG, PNG, BMP and GIF are read
(the first frame of an animation); grayscale, palette and RGBA images become RGB. Files with other
extensions are skipped and counted. Every image is decoded once up front with TensorFlow's own
decoder, so corrupt files are listed in run.json and left out instead of failing an epoch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RESIZE_METHOD = "bilinear"
"""tf.image.resize method, no antialias, aspect ratio not kept (as image_dataset_from_directory)."""

VAL_SPLIT_RANGE = "--val-split must be between 0 and 1, both excluded (e.g. 0.2); got {}"


@dataclass
class Split:
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self, num_classes: int) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes).tolist()


@dataclass
class DatasetPlan:
    class_names: list[str]
    train: Split
    val: Split
    root: Path
    val_root: Path | None
    skipped: list[str]
    """Files that are not images (by extension), relative to their data dir."""
    corrupt: list[str]
    """Image files that do not decode, relative to their data dir."""

    def class_weights(self) -> dict[int, float]:
        """Balanced weights n / (k * n_c), as scikit-learn's class_weight='balanced'."""
        counts = np.asarray(self.train.counts(len(self.class_names)), dtype=np.float64)
        total, k = counts.sum(), len(counts)
        return {i: float(total / (k * c)) if c else 0.0 for i, c in enumerate(counts)}

    def summary(self) -> dict[str, Any]:
        n = len(self.class_names)
        return {
            # NOTE: absolute, so that an export from another working directory finds the images
            "data_dir": str(self.root.resolve()),
            "val_data_dir": str(self.val_root.resolve()) if self.val_root else None,
            "classes": self.class_names,
            "train_per_class": dict(zip(self.class_names, self.train.counts(n), strict=False)),
            "val_per_class": dict(zip(self.class_names, self.val.counts(n), strict=False)),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "skipped_non_images": len(self.skipped),
            "skipped_files": self.skipped,
            "corrupt_images": len(self.corrupt),
            "corrupt_files": self.corrupt,
            "val_files": [_relative(p, self.val_root or self.root) for p in self.val.paths],
        }


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def bmp_problem(path: Path) -> str | None:
    """Why TensorFlow's BMP decoder would get this file wrong, or None.

    It reads an 8-bit palette image as grey palette indices (right only when the palette is the
    grey ramp, as for grayscale BMPs) and cannot read 1- or 4-bit images at all.
    """
    try:
        with path.open("rb") as f:
            header = f.read(54)
            if len(header) < 54 or header[:2] != b"BM":
                return None  # not a BMP at all: the decoder will call it corrupt
            dib_size = int.from_bytes(header[14:18], "little")
            bits = int.from_bytes(header[28:30], "little")
            if bits > 8 or dib_size < 40:
                return None
            if bits < 8:
                return f"{bits}-bit BMP"
            used = int.from_bytes(header[46:50], "little") or 256
            f.seek(14 + dib_size)
            palette = f.read(4 * used)
    except OSError:
        return None
    grey = all(palette[4 * i : 4 * i + 3] == bytes([i, i, i]) for i in range(len(palette) // 4))
    return None if grey else "colour-palette BMP"


def list_classes(root: Path, what: str = "data dir") -> tuple[list[str], dict[str, list[Path]], list[str]]:
    """Class names (sorted), their image files, and the relative paths of skipped files (not images,
    or BMP variants TensorFlow would decode wrongly, with the reason)."""
    if not root.exists():
        raise UsageError(f"{what} {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"{what} {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(
            f"{what} {root} has no class folders; expected one subfolder per class holding "
            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images"
        )
    bad_names = [repr(n) for n in classes if len(n.splitlines()) != 1 or n != n.strip("\n\r")]
    if bad_names:
        raise UsageError(f"class folder names must be one line; rename {', '.join(bad_names)} in {root}")
    files: dict[str, list[Path]] = {}
    skipped: list[str] = []
    for name in classes:
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                problem = bmp_problem(path) if path.suffix.lower() == ".bmp" else None
                if problem:
                    skipped.append(f"{_relative(path, root)} (unsupported: {problem}; convert to PNG)")
                elif path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(path)
                else:
                    skipped.append(_relative(path, root))
        files[name] = found
    return classes, files, skipped


def find_corrupt(paths: list[Path]) -> set[Path]:
    """Decode every file with TensorFlow (in parallel) and return those that fail.

    A progress bar shows on a terminal: this is one full decoding pass over the data.
    """
    import keras
    import tensorflow as tf

    if not paths:
        return set()
    indices = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), [str(p) for p in paths]))

    def probe(index: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
        image = decode(tf.io.read_file(path))
        return index + 0 * tf.size(image, out_type=tf.int64)  # depends on the decode, so it runs

    ok = indices.map(probe, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    bar = None
    if sys.stdout.isatty():
        print(f"checking that {len(paths)} images decode", flush=True)
        bar = keras.utils.Progbar(len(paths), unit_name="image")
    good: set[int] = set()
    for i in ok.as_numpy_iterator():
        good.add(int(i))
        if bar is not None and len(good) % 64 == 0:
            bar.update(len(good))
    if bar is not None:
        bar.update(len(paths), finalize=True)
    return {p for i, p in enumerate(paths) if i not in good}


def decode(contents: Any) -> Any:
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def _readable(
    classes: list[str], files: dict[str, list[Path]], root: Path, what: str
) -> tuple[dict[str, list[Path]], list[str]]:
    corrupt = find_corrupt([p for name in classes for p in files[name]])
    good = {name: [p for p in files[name] if p not in corrupt] for name in classes}
    empty = [name for name in classes if not good[name]]
    if empty:
        raise UsageError(
            f"class folder(s) with no readable image in {what} {root}: {', '.join(empty)} "
            f"(readable: {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files that decode)"
        )
    return good, sorted(_relative(p, root) for p in corrupt)


def plan_dataset(data_dir: Path, val_split: float, val_data: Path | None, seed: int) -> DatasetPlan:
    """Scan, check and split the data; raise UsageError naming what is wrong."""
    classes, files, skipped = list_classes(data_dir)
    if len(classes) < 2:
        raise UsageError(
            f"data dir {data_dir} has a single class ({classes[0]}); a classifier needs at least two "
            "class folders"
        )
    good, corrupt = _readable(classes, files, data_dir, "data dir")
    train, val = Split(), Split()
    if val_data is not None:
        val_classes, val_files, val_skipped = list_classes(val_data, "--val-data")
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise UsageError(
                f"--val-data {val_data} has classes not in the training data: {', '.join(unknown)}; "
                f"training classes: {', '.join(classes)}"
            )
        val_good, val_corrupt = _readable(val_classes, val_files, val_data, "--val-data")
        skipped += [str(val_data / s) for s in val_skipped]
        corrupt += [str(val_data / c) for c in val_corrupt]
        for index, name in enumerate(classes):
            train.paths += good[name]
            train.labels += [index] * len(good[name])
            val.paths += val_good.get(name, [])
            val.labels += [index] * len(val_good.get(name, []))
    else:
        if not 0.0 < val_split < 1.0:
            raise UsageError(VAL_SPLIT_RANGE.format(val_split))
        rng = np.random.default_rng(seed)
        for index, name in enumerate(classes):
            paths = good[name]
            order = rng.permutation(len(paths))
            n_val = min(len(paths) - 1, max(1, round(val_split * len(paths)))) if len(paths) > 1 else 0
            val_idx = set(order[:n_val].tolist())
            for i, path in enumerate(paths):
                split = val if i in val_idx else train
                split.paths.append(path)
                split.labels.append(index)
    if len(val) == 0:
        raise UsageError("no validation images: give each class at least two images, or pass --val-data DIR")
    return DatasetPlan(classes, train, val, data_dir, val_data, skipped, corrupt)


def load_image(path: Any, image_size: int) -> Any:
    """One image as the model sees it: decoded RGB, resized, float32 0..255."""
    import tensorflow as tf

    image = decode(tf.io.read_file(path))
    return tf.image.resize(image, (image_size, image_size), method=RESIZE_METHOD)


def image_dataset(
    split: Split,
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    augment: Any = None,
    cache: bool = True,
    repeats: int = 1,
) -> Any:
    """A batched tf.data pipeline of (float32 RGB 0..255 images, int labels).

    ``cache`` keeps the decoded images in memory after the first pass; without it every epoch
    decodes again and nothing but a few batches is held. ``augment`` is a Keras layer applied to
    training batches. ``repeats`` passes over the set (each shuffled anew) make one epoch.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(
        ([str(p) for p in split.paths], np.asarray(split.labels, dtype=np.int32))
    )

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return load_image(path, image_size), label

    if cache:
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
        if shuffle:
            ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    else:
        # NOTE: shuffle the file names, not the decoded images: a full shuffle buffer of decoded
        # images would hold the whole set in memory, which is what not caching is meant to avoid.
        if shuffle:
            ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if repeats > 1:
        ds = ds.repeat(repeats)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
