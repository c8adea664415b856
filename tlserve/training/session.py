"""The TensorFlow half of a training run: build the classifier, fit its phases, evaluate, write."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from tlserve.training import freezing, preprocessing, report, rundir
from tlserve.training.config import TrainConfig
from tlserve.training.data import DatasetPlan, Split, build_augmentation, image_dataset
from tlserve.training.features import batches, extract
from tlserve.training.fit import PhaseResult, run_phase
from tlserve.training.metrics import classification_metrics, format_metrics
from tlserve.training.network import Classifier, build_application, build_classifier, build_from_earlier

if TYPE_CHECKING:
    from tlserve.training.trainer import ResolvedBase


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

    def _images(self, split: Split, *, train: bool, cache: bool = True) -> Any:
        """Decoded images are cached in memory when they fit under --cache-memory-mb."""
        config = self.config
        size = self.resolved.image_size
        fits = len(split) * size * size * 3 * 4 <= config.cache_memory_mb * 2**20
        return image_dataset(
            split,
            size,
            config.batch_size,
            shuffle=train,
            seed=config.seed,
            augment=build_augmentation(config.seed) if train and config.augment else None,
            cache=cache and fits,
        )

    def _use_feature_cache(self) -> bool:
        if self.config.mode == "scratch" or self.config.feature_cache == "off":
            return False
        if self.config.feature_cache == "on":
            if self.config.augment:
                print("note: --feature-cache on: augmentation is not applied to cached features")
            return True
        return not self.config.augment

    # -- phases -----------------------------------------------------------------------------------
    def _fit_frozen(self, clf: Classifier, class_weight: dict[int, float] | None) -> None:
        config = self.config
        if self._use_feature_cache():
            started = time.perf_counter()
            limit = config.cache_memory_mb * 2**20
            print(
                f"feature cache: running the frozen base once over {len(self.plan.train)} train and "
                f"{len(self.plan.val)} val images",
                flush=True,
            )
            caches = {}
            for name, split in (("train", self.plan.train), ("val", self.plan.val)):
                caches[name] = extract(
                    clf.features,
                    self._images(split, train=False, cache=False),
                    len(split),
                    memory_limit_bytes=limit,
                    spill_dir=self.work,
                    name=name,
                    progress=self.progress,
                )
            self.timings["feature_extraction_seconds"] = round(time.perf_counter() - started, 3)
            self.timings["feature_cache"] = {
                "train_bytes": caches["train"].nbytes,
                "on_disk": caches["train"].on_disk,
            }
            train = batches(caches["train"], config.batch_size, shuffle=True, seed=config.seed)
            val = batches(caches["val"], config.batch_size, shuffle=False, seed=config.seed)
            model, cached = clf.head, True
        else:
            train = self._images(self.plan.train, train=True)
            val = self._images(self.plan.val, train=False)
            model, cached = clf.model, False
        self.phases.append(
            run_phase(
                "head",
                model,
                train,
                val,
                epochs=config.epochs,
                learning_rate=config.lr,
                patience=config.patience,
                class_weight=class_weight,
                used_feature_cache=cached,
            )
        )
        for path in self.work.glob("features-*.npy"):
            path.unlink()

    def _fit_end_to_end(
        self,
        name: str,
        clf: Classifier,
        lr: float,
        epochs: int,
        class_weight: dict[int, float] | None,
        unfrozen: int | None,
    ) -> None:
        self.phases.append(
            run_phase(
                name,
                clf.model,
                self._images(self.plan.train, train=True),
                self._images(self.plan.val, train=False),
                epochs=epochs,
                learning_rate=lr,
                patience=self.config.patience,
                class_weight=class_weight,
                unfrozen_layers=unfrozen,
            )
        )

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        previous_policy = keras.mixed_precision.global_policy()
        try:
            return self._run()
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)

    def _run(self) -> dict[str, Any]:
        from tlserve.training.trainer import class_weights

        config = self.config
        strategy = self._setup_runtime()
        weights = class_weights(self.plan) if config.class_weight == "auto" else None
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
                if config.mode == "finetune" and config.fine_tune_epochs > 0:
                    unfrozen = freezing.unfreeze_top(clf.base, config.unfreeze)
                    print(f"fine-tuning the top {unfrozen} layers of the base (whole blocks)", flush=True)
                    self._fit_end_to_end(
                        "finetune", clf, config.fine_tune_lr, config.fine_tune_epochs, weights, unfrozen
                    )
        started = time.perf_counter()
        val = self._images(self.plan.val, train=False, cache=False)
        probabilities = clf.model.predict(val, verbose=0)
        self.metrics = classification_metrics(
            np.asarray(self.plan.val.labels), probabilities, self.plan.class_names
        )
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
            "phases": [p.as_dict() for p in self.phases],
            "metrics": self.metrics,
            "timings": self.timings,
            "versions": report.library_versions(),
        }

    def write(self, run: dict[str, Any]) -> None:
        assert self.model is not None
        work = self.work
        self.model.save(work / rundir.MODEL_FILE)
        (work / rundir.LABELS_FILE).write_text("\n".join(self.plan.class_names) + "\n", encoding="utf-8")
        report.write_json(work / rundir.RUN_FILE, run)
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
