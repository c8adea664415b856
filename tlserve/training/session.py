"""The TensorFlow half of a training run: build the classifier, fit its phases, evaluate, write."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tlserve.training import augment as augmentation
from tlserve.training import freezing, policy, preprocessing, quality, report, rundir
from tlserve.training.config import TrainConfig
from tlserve.training.data import DatasetPlan, Split, image_dataset, load_image
from tlserve.training.features import FeatureCache, batches, extract
from tlserve.training.fit import PhaseResult, run_phase
from tlserve.training.metrics import classification_metrics, format_metrics
from tlserve.training.network import Classifier, build_application, build_classifier, build_from_earlier
from tlserve.training.policy import PhasePlan
from tlserve.training.resolve import ResolvedBase


class TrainingSession:
    def __init__(self, config: TrainConfig, resolved: ResolvedBase, plan: DatasetPlan, work: Path):
        self.config = config
        self.resolved = resolved
        self.plan = plan
        self.work = work
        self.progress = sys.stdout.isatty()
        self.timings: dict[str, Any] = {}
        self.phases: list[PhaseResult] = []
        self.model: keras.Model | None = None
        self.metrics: dict[str, Any] = {}
        self.quality: dict[str, Any] = {}
        self.probabilities = np.zeros((0, 0), dtype=np.float32)

    # -- set-up -----------------------------------------------------------------------------------
    def _setup_runtime(self) -> tf.distribute.Strategy:
        keras.utils.set_random_seed(self.config.seed)
        tf.config.experimental.enable_op_determinism()
        gpus = tf.config.list_physical_devices("GPU")
        mixed = self.config.mixed_precision == "on" or (self.config.mixed_precision == "auto" and gpus)
        keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
        self.timings["devices"] = {"gpus": len(gpus), "mixed_precision": bool(mixed)}
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()

    def _build(self) -> Classifier:
        config, resolved = self.config, self.resolved
        if resolved.earlier is not None:
            base, size = build_from_earlier(resolved.earlier)
            resolved.image_size = size
            preprocess: list[keras.layers.Layer] = []  # the earlier network brings its own
        else:
            assert resolved.spec is not None
            weights = None if config.weights == "none" else config.weights
            base = build_application(resolved.spec, resolved.image_size, weights)
            preprocess = preprocessing.preprocessing_layers(resolved.spec.preprocessing)
        if config.mode == "scratch":
            freezing.train_all(base, config.bn_momentum)
        else:
            freezing.freeze(base)
        return build_classifier(
            base,
            image_size=resolved.image_size,
            num_classes=len(self.plan.class_names),
            preprocess=preprocess,
            dropout=config.dropout,
            hidden=config.hidden,
            base_in_inference_mode=config.mode != "scratch",
        )

    def _images(
        self,
        split: Split,
        *,
        train: bool,
        cache: bool = True,
        repeats: int = 1,
        augment_seed: int | None = None,
    ) -> Any:
        """Decoded images are cached in memory when they fit under --cache-memory-mb. Training
        batches are augmented; so are others given an ``augment_seed`` (augmented copies)."""
        config = self.config
        size = self.resolved.image_size
        fits = len(split) * size * size * 3 * 4 <= config.cache_memory_mb * 2**20
        if train and augment_seed is None:
            augment_seed = config.seed
        return image_dataset(
            split,
            size,
            config.batch_size,
            shuffle=train,
            seed=config.seed,
            augment=augmentation.build(config.augment, augment_seed) if augment_seed is not None else None,
            cache=cache and fits,
            repeats=repeats,
        )

    def _use_feature_cache(self) -> bool:
        return self.config.mode != "scratch" and self.config.feature_cache != "off"

    def _plan(
        self, lr: float, *, cached: bool, images: int, epochs: int | None, fine_tune: bool = False
    ) -> PhasePlan:
        return policy.plan_phase(
            images=images,
            batch_size=self.config.batch_size,
            learning_rate=lr,
            cached=cached,
            scratch=self.config.mode == "scratch",
            fine_tune=fine_tune,
            epochs=epochs,
            patience=self.config.patience,
        )

    # -- phases -----------------------------------------------------------------------------------
    def _extract(self, clf: Classifier, split: Split, name: str, copies: int) -> FeatureCache:
        """Features of ``split``, then of ``copies`` augmented passes over it, in one cache."""
        limit = self.config.cache_memory_mb * 2**20
        passes = [
            self._images(split, train=False, cache=False, augment_seed=seed)
            for seed in [None, *(self.config.seed + 1000 * (copy + 1) for copy in range(copies))]
        ]
        count = len(split) * len(passes)
        return extract(
            clf.features,
            (batch for dataset in passes for batch in dataset),
            count,
            memory_limit_bytes=limit,
            spill_dir=self.work,
            name=name,
            progress=self.progress,
        )

    def _fit_frozen(self, clf: Classifier, class_weight: dict[int, float] | None) -> None:
        config = self.config
        if self._use_feature_cache():
            started = time.perf_counter()
            copies = policy.augmented_copies(len(self.plan.train)) if config.augment else 0
            extra = f" and {copies} augmented copies of the train set" if copies else ""
            print(
                f"feature cache: running the frozen base once over {len(self.plan.train)} train and "
                f"{len(self.plan.val)} val images{extra}",
                flush=True,
            )
            caches = {
                "train": self._extract(clf, self.plan.train, "train", copies),
                "val": self._extract(clf, self.plan.val, "val", 0),
            }
            self.timings["feature_extraction_seconds"] = round(time.perf_counter() - started, 3)
            self.timings["feature_cache"] = {
                "train_bytes": caches["train"].nbytes,
                "on_disk": caches["train"].on_disk,
                "augmented_copies": copies,
            }
            model, cached = clf.head, True
            # NOTE: planned in steps over all cached rows: an epoch over 10 augmented copies is
            # worth about 10 epochs over the originals.
            rows = len(self.plan.train) * (copies + 1)
            plan = self._plan(config.lr, cached=True, images=rows, epochs=config.epochs)
            train = batches(
                caches["train"], config.batch_size, shuffle=True, seed=config.seed, repeats=plan.repeats
            )
            val = batches(caches["val"], config.batch_size, shuffle=False, seed=config.seed)
        else:
            copies = 0
            plan = self._plan(config.lr, cached=False, images=len(self.plan.train), epochs=config.epochs)
            train = self._images(self.plan.train, train=True, repeats=plan.repeats)
            val = self._images(self.plan.val, train=False)
            model, cached = clf.model, False
        self.phases.append(
            run_phase(
                "head",
                model,
                train,
                val,
                plan=plan,
                class_weight=class_weight,
                used_feature_cache=cached,
                augmented_copies=copies,
            )
        )
        for path in self.work.glob("features-*.npy"):
            path.unlink()

    def _fit_end_to_end(
        self,
        name: str,
        clf: Classifier,
        lr: float,
        epochs: int | None,
        class_weight: dict[int, float] | None,
        unfrozen: int | None,
    ) -> None:
        plan = self._plan(
            lr, cached=False, images=len(self.plan.train), epochs=epochs, fine_tune=name == "finetune"
        )
        self.phases.append(
            run_phase(
                name,
                clf.model,
                self._images(self.plan.train, train=True, repeats=plan.repeats),
                self._images(self.plan.val, train=False),
                plan=plan,
                class_weight=class_weight,
                from_start=name == "finetune",
                unfrozen_layers=unfrozen,
            )
        )

    def fine_tune_lr(self) -> float:
        if self.config.fine_tune_lr is not None:
            return self.config.fine_tune_lr
        return policy.fine_tune_lr(self.resolved.earlier_lr)

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        previous_policy = keras.mixed_precision.global_policy()
        try:
            return self._run()
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)

    def _run(self) -> dict[str, Any]:
        config = self.config
        strategy = self._setup_runtime()
        weights = self.plan.class_weights() if config.class_weight == "auto" else None
        with strategy.scope():
            clf = self._build()
        self.model = clf.model
        scope = strategy.scope() if strategy.num_replicas_in_sync > 1 else contextlib.nullcontext()
        with scope:
            if config.mode == "scratch":
                layers = len(freezing.flatten(clf.base).leaves)
                self._fit_end_to_end("scratch", clf, config.lr, config.epochs, weights, layers)
            else:
                self._fit_frozen(clf, weights)
                if config.mode == "finetune" and config.fine_tune_epochs != 0:
                    count = config.unfreeze
                    if count == "auto":
                        own = self.resolved.earlier is not None and self.resolved.earlier_lr is not None
                        count = policy.unfreeze_count(earlier=own)
                    unfrozen = freezing.unfreeze_top(clf.base, count)
                    lr = self.fine_tune_lr()
                    print(f"fine-tuning the top {unfrozen} layers of the base (whole blocks)", flush=True)
                    self._fit_end_to_end("finetune", clf, lr, config.fine_tune_epochs, weights, unfrozen)
        started = time.perf_counter()
        val = self._images(self.plan.val, train=False, cache=False)
        self.probabilities = clf.model.predict(val, verbose=0)
        self.metrics = classification_metrics(
            np.asarray(self.plan.val.labels), self.probabilities, self.plan.class_names
        )
        self.quality = quality.assess(self.metrics["confusion_matrix"], self.plan.class_names)
        self.timings["evaluation_seconds"] = round(time.perf_counter() - started, 3)
        print(format_metrics(self.metrics), flush=True)
        return self._report(clf)

    def _report(self, clf: Classifier) -> dict[str, Any]:
        spec = self.resolved.spec
        self.timings["phases_seconds"] = {p.name: round(p.seconds, 3) for p in self.phases}
        return {
            "tlserve_run": 1,
            "config": self.config.as_dict(),
            "base": {
                "name": spec.name if spec else None,
                "builder": spec.builder if spec else None,
                "earlier": str(self.resolved.earlier.resolve()) if self.resolved.earlier else None,
                "preprocessing": spec.preprocessing if spec else "from the earlier network",
                "image_size": self.resolved.image_size,
                "layers": len(freezing.flatten(clf.base).leaves),
                "params": int(clf.base.count_params()),
            },
            "model": {
                "input": {
                    "name": "image",
                    "shape": [None, self.resolved.image_size, self.resolved.image_size, 3],
                    "dtype": "float32",
                    "range": [0, 255],
                    "color": "RGB",
                },
                "output": {"name": "probabilities", "classes": len(self.plan.class_names)},
                "params": int(clf.model.count_params()),
            },
            "dataset": self.plan.summary(),
            "augmentation": {name: augmentation.AUGMENTATIONS[name] for name in self.config.augment},
            "phases": [p.as_dict() for p in self.phases],
            "metrics": self.metrics,
            "quality": self.quality,
            "timings": self.timings,
            "versions": report.library_versions(),
        }

    def write(self, run: dict[str, Any]) -> None:
        assert self.model is not None
        work = self.work
        self.model.save(work / rundir.MODEL_FILE)
        (work / rundir.LABELS_FILE).write_text("\n".join(self.plan.class_names) + "\n", encoding="utf-8")
        earlier = self.resolved.earlier
        base_name = run["base"]["name"] or f"earlier network {earlier.name if earlier else ''}"
        title = f"{base_name} · {self.config.mode}"
        report.plot_history(run["phases"], work / rundir.HISTORY_PLOT, title)
        report.plot_confusion(
            self.metrics["confusion_matrix"],
            self.plan.class_names,
            work / rundir.CONFUSION_PLOT,
            f"{title} · val accuracy {self.metrics['accuracy']:.3f}",
        )
        run["mistakes"] = report.plot_mistakes(
            ValImages(self.plan.val, self.resolved.image_size),
            np.asarray(self.plan.val.labels),
            self.probabilities,
            self.plan.class_names,
            run["dataset"]["val_files"],
            work / rundir.MISTAKES_PLOT,
            title,
        )
        report.write_json(work / rundir.RUN_FILE, run)


class ValImages:
    """Validation images as the model saw them (decoded, resized), read one at a time on access:
    the mistakes sheet shows a few of them, and a large validation set must not be held in memory."""

    def __init__(self, split: Split, image_size: int) -> None:
        self.split = split
        self.size = image_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(load_image(str(self.split.paths[index]), self.size))
