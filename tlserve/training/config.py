"""The trainer's settings: one typed object, filled by the CLI and checked before any work starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

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
    epochs: int = 10
    fine_tune_epochs: int = 10
    unfreeze: int | None = 30
    """Layers to unfreeze from the top in finetune mode (rounded to whole blocks); None = all."""
    lr: float = 1e-3
    fine_tune_lr: float = 1e-5
    batch_size: int = 32
    dropout: float = 0.2
    hidden: int = 0
    patience: int = 3
    class_weight: Literal["none", "auto"] = "none"
    augment: bool = True
    feature_cache: Literal["auto", "on", "off"] = "auto"
    """auto: cache when the base is frozen and augmentation is off; on: also with augmentation."""
    cache_memory_mb: int = 2048
    """Cached features or images larger than this spill to disk."""
    bn_momentum: float = 0.9
    """BatchNormalization momentum in scratch mode (Keras Applications use 0.99/0.999)."""
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    seed: int = 42
    overwrite: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
