"""The fit policy: how long each phase trains, when it stops, and at which learning rate.

Small datasets break epoch-based defaults: 20 images at batch 32 are one gradient step an epoch, so
"10 epochs, patience 3" is ten steps, and early stopping on a validation set of a dozen images fires
at the first wobble. So the defaults are set in *steps*, and turned into epochs for the data at hand:

- a phase plans ``ceil(steps / steps_per_epoch)`` epochs, between ``MIN_EPOCHS`` (scratch:
  ``SCRATCH_MIN_EPOCHS``) and ``MAX_EPOCHS``;
  the head on cached features gets more steps (they cost microseconds), a phase that runs the base
  fewer;
- a phase stops early only after ``patience`` epochs in which *neither* validation loss nor
  validation accuracy improved (a tiny validation set's loss can rise while its accuracy climbs),
  and (with auto patience) never before a quarter of its planned epochs;
- after half the patience without improvement the learning rate drops by ``PLATEAU_FACTOR``
  (down to a hundredth of where it started), not before the phase's minimum epochs (a random
  network can sit at chance for a while before it starts to learn);
- the weights kept are those of the epoch with the best validation accuracy, ties broken by the
  lower validation loss; fine-tuning counts the weights it started from as epoch 0, so it can only
  keep or improve on the frozen head.

Fine-tuning unfreezes a network the user trained before whole (it is small, and was trained on
data like theirs: measured on digits, unfreezing all of it gave 0.89-0.91 where the top 30 layers
gave 0.69), and the top 30 layers (whole blocks) of a Keras Application.
The fine-tuning learning rate suits the base: 1e-5 for ImageNet weights (the Keras guide's value:
a large pretrained network is easily destroyed), and for a network the user trained before, 0.3 of
the learning rate it was trained at (measured: the TF tutorial's base_lr / 10 left fine-tuning
0.02-0.06 short of a sweep on three tasks; 0.3 with 600 steps came within 0.01). Every figure here can be
overridden by a flag (the repeats, plateau factor and augmented copies excepted); docs/training.md
gives the measurements behind them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HEAD_STEPS = 3000
"""Planned optimizer steps of the head on cached features (a step costs microseconds: with 600,
the head on shapes -> digits features stopped at 0.77 where a longer sweep point reached 0.84)."""
END_TO_END_STEPS = 300
"""Planned steps of the head when the frozen base runs every epoch (``--feature-cache off``)."""
FINE_TUNE_STEPS = 600
"""Planned steps of fine-tuning (with 300, patience 8 stopped it 0.02-0.06 short of a sweep)."""
SCRATCH_STEPS = 1500
"""Planned steps from a random initialisation: it needs far more than a pretrained network (a
shape classifier on 900 images was still improving after 300 steps, at 0.51 accuracy)."""
SCRATCH_MIN_EPOCHS = 50
"""...and many passes over a larger set: 1,500 steps are 20 epochs of 2,400 images, and a MobileNetV2
on 2,400 cluttered digits was still at chance after them (0.30 after 23 epochs at a constant rate)."""
MIN_STEPS_PER_EPOCH = 8
"""A small training set is repeated within an epoch to make this many steps: validation then runs
every 8 steps, not after every step (on 20 images it would cost more than the training)."""
MIN_EPOCHS = 10
MAX_EPOCHS = 200
MIN_PATIENCE = 5
PLATEAU_FACTOR = 0.3
MIN_LR_FRACTION = 0.01
IMAGENET_FINE_TUNE_LR = 1e-5
IMAGENET_UNFREEZE = 30
"""Layers unfrozen at the top of a Keras Application (rounded to whole blocks); an earlier network
of the user's is unfrozen whole."""
EARLIER_FINE_TUNE_LR_FRACTION = 0.3


@dataclass(frozen=True)
class PhasePlan:
    epochs: int
    repeats: int
    """Passes over the training set in one epoch."""
    patience: int
    """Epochs without a better validation loss or accuracy before the phase stops."""
    min_epochs: int
    """The phase never stops before this many epochs."""
    learning_rate: float
    plateau_patience: int
    """Epochs without improvement before the learning rate drops by ``PLATEAU_FACTOR``; 0 = never."""
    min_learning_rate: float

    def describe(self) -> str:
        passes = f" of {self.repeats} passes over the data" if self.repeats > 1 else ""
        return (
            f"up to {self.epochs} epochs{passes} at learning rate {self.learning_rate:g}, stopping after "
            f"{self.patience} epochs without progress (not before epoch {self.min_epochs})"
        )


def steps_per_epoch(images: int, batch_size: int) -> int:
    return max(1, math.ceil(images / batch_size))


def repeats(images: int, batch_size: int) -> int:
    """How many passes over the training set make one epoch."""
    return max(1, math.ceil(MIN_STEPS_PER_EPOCH / steps_per_epoch(images, batch_size)))


def plan_phase(
    *,
    images: int,
    batch_size: int,
    learning_rate: float,
    cached: bool,
    scratch: bool = False,
    fine_tune: bool = False,
    epochs: int | None = None,
    patience: int | None = None,
) -> PhasePlan:
    """The plan of one phase; ``epochs`` and ``patience`` are the user's overrides, None = auto."""
    steps = (
        SCRATCH_STEPS
        if scratch
        else FINE_TUNE_STEPS
        if fine_tune
        else HEAD_STEPS
        if cached
        else END_TO_END_STEPS
    )
    per_epoch = steps_per_epoch(images, batch_size) * repeats(images, batch_size)
    if epochs is None:
        least = SCRATCH_MIN_EPOCHS if scratch else MIN_EPOCHS
        epochs = min(MAX_EPOCHS, max(least, math.ceil(steps / per_epoch)))
    auto_patience = patience is None
    if patience is None:
        patience = max(MIN_PATIENCE, math.ceil(epochs / 5))
    return PhasePlan(
        epochs=epochs,
        repeats=repeats(images, batch_size),
        patience=patience,
        # NOTE: a --patience the user chose is taken at its word; the floor guards the auto one.
        min_epochs=min(epochs, max(1, epochs // 4)) if auto_patience else 1,
        learning_rate=learning_rate,
        plateau_patience=max(1, patience // 2) if patience else 0,
        min_learning_rate=learning_rate * MIN_LR_FRACTION,
    )


def unfreeze_count(*, earlier: bool) -> int | None:
    """The auto ``--unfreeze``: None (all layers) for an earlier network, 30 for an Application."""
    return None if earlier else IMAGENET_UNFREEZE


def fine_tune_lr(earlier_lr: float | None) -> float:
    """The auto fine-tuning rate: 1e-5 for ImageNet weights, 0.3 × earlier_lr for an own network."""
    if earlier_lr is None:
        return IMAGENET_FINE_TUNE_LR
    return earlier_lr * EARLIER_FINE_TUNE_LR_FRACTION


AUGMENTED_CACHE_IMAGES = 2000
"""Frozen mode with augmentation caches the features of this many augmented images (in copies of
the training set, 1 to ``MAX_AUGMENTED_COPIES``): a few extraction passes instead of running the
frozen base in every epoch."""
MAX_AUGMENTED_COPIES = 10


def augmented_copies(train_images: int) -> int:
    return min(MAX_AUGMENTED_COPIES, max(1, math.ceil(AUGMENTED_CACHE_IMAGES / max(1, train_images))))
