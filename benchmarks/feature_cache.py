"""Feature cache speed-up: a frozen-mode epoch on cached features vs an epoch that re-runs the base.

Both are measured side by side in one process, on the same generated images, through the trainer's
own code (data pipeline, feature extraction, head sharing). Prints the figures; asserts nothing.

    python benchmarks/feature_cache.py [--images 300] [--size 160] [--base mobilenet_v2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from PIL import Image

from tlserve.training.bases import get_base
from tlserve.training.data import (
    image_dataset,
    plan_dataset,
)
from tlserve.training.features import batches, extract
from tlserve.training.fit import compile_for
from tlserve.training.network import build_application, build_classifier
from tlserve.training.preprocessing import preprocessing_layers


class EpochTimes(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self._t = 0.0

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.times.append(time.perf_counter() - self._t)


def make_images(root: Path, count: int, classes: int = 3) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--base", default="mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per variant (first is warm-up)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is warm-up and is not timed")
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_images(root, args.images)
        plan = plan_dataset(root, 0.1, None, seed=0)
        spec = get_base(args.base)
        base = build_application(spec, args.size, None)
        base.trainable = False
        clf = build_classifier(
            base,
            image_size=args.size,
            num_classes=len(plan.class_names),
            preprocess=preprocessing_layers(spec.preprocessing),
            dropout=0.2,
            hidden=0,
            base_in_inference_mode=True,
        )
        # end to end: decoded images cached in memory, so only the network's work is timed
        images = image_dataset(plan.train, args.size, 32, shuffle=True, seed=0, cache=True)
        compile_for(clf.model, 1e-3)
        full = EpochTimes()
        clf.model.fit(images, epochs=args.epochs, callbacks=[full], verbose=0, shuffle=False)

        started = time.perf_counter()
        cache = extract(
            clf.features,
            image_dataset(plan.train, args.size, 32, shuffle=False, seed=0, cache=False),
            len(plan.train),
            memory_limit_bytes=2**31,
            spill_dir=Path(tmp),
            name="train",
            progress=False,
        )
        extraction = time.perf_counter() - started
        compile_for(clf.head, 1e-3)
        head = EpochTimes()
        clf.head.fit(
            batches(cache, 32, shuffle=True, seed=0), epochs=args.epochs, callbacks=[head], verbose=0
        )
    full_epoch = float(np.median(full.times[1:]))
    head_epoch = float(np.median(head.times[1:]))
    print(f"base {args.base}, {len(plan.train)} training images at {args.size}px, {os.cpu_count()} CPU cores")
    print(f"frozen epoch re-running the base : {full_epoch:8.3f} s  (median of epochs 2..{args.epochs})")
    print(f"one feature-extraction pass       : {extraction:8.3f} s")
    print(f"head epoch on cached features     : {head_epoch:8.3f} s")
    print(f"ratio cached / re-running (goal <= 0.05): {head_epoch / full_epoch:.4f}")
    for epochs in (10, 50):
        with_cache = extraction + epochs * head_epoch
        print(
            f"{epochs} epochs: {epochs * full_epoch:7.1f} s re-running vs {with_cache:6.1f} s with the cache"
        )


if __name__ == "__main__":
    main()
