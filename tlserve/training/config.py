"""The trainer's settings: one typed object, filled by the CLI and checked before any work starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tlserve.training.augment import DEFAULT_AUGMENT

Mode = Literal["frozen", "finetune", "scratch"]
MODES: tuple[Mode, ...] = ("frozen", "finetune", "scratch")


@dataclass
class TrainConfig:
    data_dir: Path
    """One subfolder per class."""
    out: Path
    """The run dir to write; must be new or empty unless ``overwrite``."""
    base: str = "mobilenet_v2"
    """A base name from ``tlserve bases``, or a path to an earlier run dir or .keras file."""
    weights: str = "imagenet"
    """'imagenet' (Keras download and cache), 'none' (random init) or a path to a *_no_top.h5 file."""
    mode: Mode = "frozen"
    image_size: int | None = None
    """Square input size in pixels; None takes the base's default."""
    val_split: float = 0.2
    val_data: Path | None = None
    epochs: int | None = None
    """Epochs of the head (or scratch) phase; None: planned from the data (see policy.py)."""
    fine_tune_epochs: int | None = None
    """Epochs of the fine-tuning phase; None: planned from the data; 0: no fine-tuning phase."""
    unfreeze: int | Literal["auto"] | None = "auto"
    """Layers to unfreeze from the top in finetune mode (rounded to whole blocks); None = all;
    auto: all of an earlier network, the top 30 of a Keras Application (see policy.py)."""
    lr: float = 1e-3
    fine_tune_lr: float | None = None
    """None: 1e-5 for ImageNet weights, 0.3 of an earlier network's own learning rate."""
    batch_size: int = 32
    dropout: float = 0.2
    hidden: int = 0
    patience: int | None = None
    """Epochs without progress before a phase stops; None: planned from the data."""
    class_weight: Literal["none", "auto"] = "none"
    augment: tuple[str, ...] = DEFAULT_AUGMENT
    """Random transforms of training images (names from augment.AUGMENTATIONS); () = none."""
    feature_cache: Literal["auto", "on", "off"] = "auto"
    """auto/on: a frozen base runs once over the training images (and a few augmented copies of
    them) and the head trains on the cached features; off: the base runs every epoch."""
    cache_memory_mb: int = 2048
    """Cached features or images larger than this spill to disk."""
    bn_momentum: float = 0.9
    """BatchNormalization momentum in scratch mode (Keras Applications use 0.99/0.999)."""
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    seed: int = 42
    overwrite: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
        }
