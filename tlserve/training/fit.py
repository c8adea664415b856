"""One training phase: compile, fit under the fit policy (``policy.py``), keep the best weights."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tlserve.training.policy import PLATEAU_FACTOR, PhasePlan


@dataclass
class PhaseResult:
    name: str
    plan: PhasePlan
    trainable_params: int
    epochs: list[dict[str, float]] = field(default_factory=list)
    kept_epoch: int = 0
    """1-based epoch whose weights were kept; 0 = the weights the phase started from."""
    stop_reason: str = ""
    seconds: float = 0.0
    used_feature_cache: bool = False
    unfrozen_layers: int | None = None
    augmented_copies: int = 0
    start: dict[str, float] | None = None
    """Validation loss and accuracy of the weights the phase started from (fine-tuning)."""

    @property
    def kept(self) -> dict[str, float]:
        """The validation figures of the kept weights."""
        if self.kept_epoch == 0:
            return self.start or {}
        return self.epochs[self.kept_epoch - 1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "learning_rate": self.plan.learning_rate,
            "planned_epochs": self.plan.epochs,
            "passes_per_epoch": self.plan.repeats,
            "patience": self.plan.patience,
            "plateau_patience": self.plan.plateau_patience,
            "min_epochs": self.plan.min_epochs,
            "trainable_params": self.trainable_params,
            "used_feature_cache": self.used_feature_cache,
            "augmented_copies": self.augmented_copies,
            "unfrozen_layers": self.unfrozen_layers,
            "epochs_run": len(self.epochs),
            "kept_epoch": self.kept_epoch,
            "kept": self.kept,
            "start": self.start,
            "stopped_early": len(self.epochs) < self.plan.epochs,
            "stop_reason": self.stop_reason,
            "seconds": round(self.seconds, 3),
            "history": self.epochs,
        }


class EpochLine(keras.callbacks.Callback):
    """One concise line per epoch, for logs (Keras' own bar is used on a terminal)."""

    def __init__(self, phase: str, epochs: int) -> None:
        super().__init__()
        self.phase = phase
        self.total = epochs
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        parts = [f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate"]
        seconds = time.perf_counter() - self.started
        print(
            f"[{self.phase}] epoch {epoch + 1}/{self.total}  {'  '.join(parts)}  {seconds:.1f}s",
            flush=True,
        )


class FitPolicy(keras.callbacks.Callback):
    """Keeps the best epoch, lowers the learning rate on plateaus, stops when progress ends.

    Best: highest validation accuracy, ties broken by lower validation loss. Progress: a lower
    validation loss *or* a higher validation accuracy than ever before in the phase.
    """

    def __init__(self, plan: PhasePlan, start: dict[str, float] | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.start = start
        self.kept_epoch = 0
        self.stop_reason = ""
        self.best: tuple[float, float] | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.lowest_loss = np.inf
        self.highest_accuracy = -np.inf
        self.waited = 0
        self.plateau_waited = 0

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        if self.start is not None:
            self._consider(0, self.start["val_loss"], self.start["val_accuracy"])

    def _consider(self, epoch: int, loss: float, accuracy: float) -> bool:
        score = (round(accuracy, 6), -loss)
        if self.best is None or score > self.best:
            self.best, self.kept_epoch = score, epoch
            self.best_weights = self.model.get_weights()
        progress = loss < self.lowest_loss - 1e-4 or accuracy > self.highest_accuracy + 1e-6
        self.lowest_loss = min(self.lowest_loss, loss)
        self.highest_accuracy = max(self.highest_accuracy, accuracy)
        return progress

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        loss, accuracy = logs.get("val_loss"), logs.get("val_accuracy")
        if loss is None or accuracy is None:
            return
        # NOTE: a diverged epoch (NaN loss) is never kept, and counts as no progress.
        if np.isfinite(loss) and self._consider(epoch + 1, float(loss), float(accuracy)):
            self.waited = self.plateau_waited = 0
            return
        self.waited += 1
        self.plateau_waited += 1
        plan = self.plan
        # NOTE: no rate cut before min_epochs: a cut in a slow start (a random network at chance)
        # compounds, and left a scratch run at lr/100 by epoch 12 of 20, never having learnt.
        if (
            plan.plateau_patience
            and self.plateau_waited >= plan.plateau_patience
            and epoch + 1 >= plan.min_epochs
        ):
            lowered = max(plan.min_learning_rate, logs["learning_rate"] * PLATEAU_FACTOR)
            if lowered < logs["learning_rate"]:
                optimizer.learning_rate.assign(lowered)
            self.plateau_waited = 0
        if plan.patience and self.waited >= plan.patience and epoch + 1 >= plan.min_epochs:
            self.stop_reason = f"no progress for {self.waited} epochs"
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def compile_for(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def start_point(model: keras.Model, val: Any) -> dict[str, float]:
    """Validation loss and accuracy of ``model`` as it is (compiled)."""
    loss, accuracy = model.evaluate(val, verbose=0)
    return {"val_loss": round(float(loss), 6), "val_accuracy": round(float(accuracy), 6)}


def run_phase(
    name: str,
    model: keras.Model,
    train: Any,
    val: Any,
    *,
    plan: PhasePlan,
    class_weight: dict[int, float] | None,
    from_start: bool = False,
    used_feature_cache: bool = False,
    unfrozen_layers: int | None = None,
    augmented_copies: int = 0,
) -> PhaseResult:
    """Compile ``model`` (after any change to ``trainable``) and fit it under ``plan``.

    ``from_start``: the weights the phase starts from count as epoch 0 (kept when no epoch beats
    them), as fine-tuning after a trained head must never end worse than it began.
    """
    compile_for(model, plan.learning_rate)
    result = PhaseResult(
        name,
        plan,
        sum(int(keras.ops.size(w)) for w in model.trainable_weights),
        used_feature_cache=used_feature_cache,
        unfrozen_layers=unfrozen_layers,
        augmented_copies=augmented_copies,
    )
    if from_start:
        result.start = start_point(model, val)
    policy = FitPolicy(plan, result.start)
    on_terminal = sys.stdout.isatty()
    callbacks: list[keras.callbacks.Callback] = [policy]
    if not on_terminal:
        callbacks.append(EpochLine(name, plan.epochs))
    print(f"phase {name}: {plan.describe()}", flush=True)
    started = time.perf_counter()
    history = model.fit(
        train,
        validation_data=val,
        epochs=plan.epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        shuffle=False,  # NOTE: our pipelines shuffle themselves, every epoch
        verbose=1 if on_terminal else 0,
    )
    result.seconds = time.perf_counter() - started
    keys = list(history.history)
    result.epochs = [
        {k: round(float(history.history[k][i]), 6) for k in keys}
        for i in range(len(history.history.get("loss", [])))
    ]
    result.kept_epoch = policy.kept_epoch
    result.stop_reason = policy.stop_reason or f"planned {plan.epochs} epochs done"
    print(f"phase {name}: {kept_line(result)}", flush=True)
    return result


def kept_line(result: PhaseResult) -> str:
    kept = result.kept
    figures = ""
    if "val_accuracy" in kept:
        figures = f" (val accuracy {kept['val_accuracy']:.3f}, loss {kept['val_loss']:.3f})"
    return f"{kept_epoch_words(result.kept_epoch, len(result.epochs))}{figures}; {result.stop_reason}"


def kept_epoch_words(kept: int, run: int) -> str:
    """ "kept epoch 12 of 40", or for fine-tuning that never beat its start, "kept its starting
    weights (0 of 40 epochs better)"."""
    if kept == 0:
        return f"kept its starting weights (none of {run} epochs better)"
    return f"kept epoch {kept} of {run}"
