"""One training phase: compile, fit with early stopping on validation loss, keep the best weights."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import keras


@dataclass
class PhaseResult:
    name: str
    learning_rate: float
    trainable_params: int
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    used_feature_cache: bool = False
    unfrozen_layers: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "learning_rate": self.learning_rate,
            "trainable_params": self.trainable_params,
            "used_feature_cache": self.used_feature_cache,
            "unfrozen_layers": self.unfrozen_layers,
            "epochs_run": len(self.epochs),
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
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


def compile_for(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def run_phase(
    name: str,
    model: keras.Model,
    train: Any,
    val: Any,
    *,
    epochs: int,
    learning_rate: float,
    patience: int,
    class_weight: dict[int, float] | None,
    used_feature_cache: bool = False,
    unfrozen_layers: int | None = None,
) -> PhaseResult:
    """Compile ``model`` (after any change to ``trainable``) and fit it."""
    compile_for(model, learning_rate)
    result = PhaseResult(
        name,
        learning_rate,
        sum(int(keras.ops.size(w)) for w in model.trainable_weights),
        used_feature_cache=used_feature_cache,
        unfrozen_layers=unfrozen_layers,
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True, verbose=0
    )
    on_terminal = sys.stdout.isatty()
    callbacks: list[keras.callbacks.Callback] = [stopper]
    if not on_terminal:
        callbacks.append(EpochLine(name, epochs))
    elif epochs:
        print(f"phase {name}: {epochs} epochs at learning rate {learning_rate:g}", flush=True)
    started = time.perf_counter()
    history = model.fit(
        train,
        validation_data=val,
        epochs=epochs,
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
    losses = [e["val_loss"] for e in result.epochs if "val_loss" in e]
    result.best_epoch = 1 + losses.index(min(losses)) if losses else len(result.epochs)
    result.stopped_early = len(result.epochs) < epochs
    return result
