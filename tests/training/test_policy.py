"""The fit policy: plans that scale with the data, and the callback that keeps, lowers and stops."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlserve.training import augment, policy
from tlserve.training.fit import FitPolicy, kept_line, run_phase
from tlserve.training.policy import PhasePlan, plan_phase


def test_small_data_gets_more_epochs_and_patience_than_ten_and_three() -> None:
    # 20 images at batch 32: one step an epoch, so the set is repeated to make 8
    tiny = plan_phase(images=20, batch_size=32, learning_rate=1e-3, cached=False)
    assert tiny.repeats == 8
    assert tiny.epochs == 38  # ceil(300 steps / 8 per epoch)
    assert tiny.patience == 8 and tiny.plateau_patience == 4 and tiny.min_epochs == 9
    head = plan_phase(images=20, batch_size=32, learning_rate=1e-3, cached=True)
    assert head.epochs == 200  # ceil(3000 / 8) capped: the head on cached features gets more steps
    scratch = plan_phase(images=20, batch_size=32, learning_rate=1e-3, cached=False, scratch=True)
    assert scratch.epochs == 188  # ceil(1500 / 8): from a random initialisation, many more
    # from scratch a larger set still gets many passes: 1,500 steps would be 20 epochs of 2,400 images
    scratch_large = plan_phase(images=2400, batch_size=32, learning_rate=1e-3, cached=False, scratch=True)
    assert scratch_large.epochs == policy.SCRATCH_MIN_EPOCHS == 50
    assert (scratch_large.patience, scratch_large.plateau_patience, scratch_large.min_epochs) == (10, 5, 12)
    # a large set: one pass is many steps, so few epochs, never fewer than the minimum
    large = plan_phase(images=50_000, batch_size=32, learning_rate=1e-3, cached=False)
    assert large.repeats == 1 and large.epochs == policy.MIN_EPOCHS
    assert large.patience == policy.MIN_PATIENCE and large.min_learning_rate == pytest.approx(1e-5)


def test_flags_override_the_plan() -> None:
    plan = plan_phase(images=20, batch_size=32, learning_rate=1e-2, cached=True, epochs=4, patience=0)
    assert (plan.epochs, plan.patience, plan.plateau_patience) == (4, 0, 0)
    assert plan.learning_rate == 1e-2 and plan.min_epochs == 1


def test_fine_tuning_rate_and_depth_suit_the_base() -> None:
    assert policy.fine_tune_lr(None) == 1e-5  # ImageNet weights
    assert policy.fine_tune_lr(1e-3) == pytest.approx(3e-4)  # an own network trained at 1e-3
    fine = plan_phase(images=20, batch_size=32, learning_rate=3e-4, cached=False, fine_tune=True)
    assert (fine.epochs, fine.patience) == (75, 15)  # ceil(600 / 8)
    assert policy.unfreeze_count(earlier=True) is None  # all of it
    assert policy.unfreeze_count(earlier=False) == 30


def test_augmented_copies_fill_a_budget() -> None:
    assert policy.augmented_copies(20) == policy.MAX_AUGMENTED_COPIES
    assert policy.augmented_copies(500) == 4
    assert policy.augmented_copies(100_000) == 1


def test_augmentation_names() -> None:
    assert augment.parse("none") == ()
    assert augment.parse("default") == augment.DEFAULT_AUGMENT
    assert augment.parse(" Flip, zoom,flip") == ("flip", "zoom")
    assert "flip" not in augment.DEFAULT_AUGMENT  # wrong for digits and text, so opt-in
    with pytest.raises(Exception, match="expected none, default, or a comma-separated list"):
        augment.parse("flip,shear")


def plan(**overrides: Any) -> PhasePlan:
    values = {"epochs": 30, "repeats": 1, "patience": 4, "min_epochs": 1, "learning_rate": 0.1}
    values |= {"plateau_patience": 2, "min_learning_rate": 0.001}
    return PhasePlan(**{**values, **overrides})


class Scripted(keras.callbacks.Callback):
    """Replaces the validation figures of each epoch with a script (runs before the policy)."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        super().__init__()
        self.script = script

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        assert logs is not None
        logs["val_loss"], logs["val_accuracy"] = self.script[min(epoch, len(self.script) - 1)]
        self.model.get_layer("w").set_weights([np.full((1, 1), float(epoch + 1))])


def fit(script: list[tuple[float, float]], fit_plan: PhasePlan, start: dict[str, float] | None = None) -> Any:
    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="w")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(fit_plan.learning_rate), loss="mse")
    model.get_layer("w").set_weights([np.zeros((1, 1))])
    fit_policy = FitPolicy(fit_plan, start)
    x = np.ones((4, 1), np.float32)
    history = model.fit(
        x,
        x,
        validation_data=(x, x),
        epochs=fit_plan.epochs,
        verbose=0,
        callbacks=[Scripted(script), fit_policy],
    )
    return model, fit_policy, history.history


def weight(model: keras.Model) -> float:
    return float(model.get_layer("w").get_weights()[0][0, 0])


def test_a_rising_val_loss_with_rising_accuracy_does_not_stop_the_phase() -> None:
    # the pattern of the issue: val loss 0.73 -> 0.85 while val accuracy climbs 0.55 -> 0.71
    script = [(0.73, 0.55), (0.80, 0.60), (0.85, 0.65), (0.86, 0.71), (0.90, 0.71)]
    script += [(0.95, 0.70)] * 10
    model, fit_policy, history = fit(script, plan())
    assert fit_policy.kept_epoch == 4  # best accuracy, the lower loss of the two 0.71 epochs
    assert weight(model) == 4.0  # its weights were restored
    assert len(history["loss"]) == 4 + 4  # stopped after 4 epochs without progress
    assert fit_policy.stop_reason == "no progress for 4 epochs"


def test_plateaus_lower_the_learning_rate_down_to_a_floor() -> None:
    _, _, history = fit([(1.0, 0.5)], plan(epochs=12, patience=0, plateau_patience=2))
    rates = history["learning_rate"]
    assert len(rates) == 12  # patience 0: never stops early
    # epoch 1 is progress; after epochs 2 and 3 without any, the rate drops for epoch 4 on
    assert rates[:5] == pytest.approx([0.1, 0.1, 0.1, 0.03, 0.03])
    assert rates[-1] == pytest.approx(0.001)  # never below min_learning_rate
    assert min(rates) >= 0.001 - 1e-9


def test_min_epochs_hold_off_early_stopping() -> None:
    _, fit_policy, history = fit([(1.0, 0.5)], plan(patience=2, min_epochs=10))
    assert len(history["loss"]) == 10
    assert fit_policy.kept_epoch == 1


def test_min_epochs_hold_off_rate_cuts() -> None:
    # a slow start (no progress after epoch 1) keeps the full rate until min_epochs, then plateaus cut it
    _, _, history = fit([(1.0, 0.5)], plan(epochs=8, patience=0, plateau_patience=2, min_epochs=6))
    assert history["learning_rate"] == pytest.approx([0.1] * 6 + [0.03] * 2)


def test_fine_tuning_keeps_its_starting_weights_when_no_epoch_beats_them() -> None:
    start = {"val_loss": 0.3, "val_accuracy": 0.9}
    model, fit_policy, _ = fit([(0.5, 0.8)], plan(patience=3), start=start)
    assert fit_policy.kept_epoch == 0
    assert weight(model) == 0.0  # the weights before the phase


def test_run_phase_reports_the_kept_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    result = run_phase(
        "head", model, data, data, plan=plan(epochs=6, patience=0, learning_rate=0.05), class_weight=None
    )
    out = capsys.readouterr().out
    record = result.as_dict()
    assert record["epochs_run"] == 6 and 1 <= record["kept_epoch"] <= 6
    assert record["kept"] == record["history"][record["kept_epoch"] - 1]
    assert f"phase head: kept epoch {record['kept_epoch']} of 6" in out
    assert kept_line(result) in out
    assert all("learning_rate" in epoch for epoch in record["history"])
