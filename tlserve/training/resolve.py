"""Which network a run starts from: ``--base``, ``--weights`` and ``--image-size`` checked without
building anything (no TensorFlow), so that a wrong one is said before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlserve.errors import UsageError
from tlserve.training import rundir
from tlserve.training.bases import BaseSpec, base_names, get_base
from tlserve.training.config import TrainConfig


@dataclass
class ResolvedBase:
    spec: BaseSpec | None
    """The Keras Application, or None for an earlier network."""
    earlier: Path | None
    image_size: int
    earlier_lr: float | None = None
    """The rate an earlier network of the user's was trained at; None for ImageNet weights."""


def resolve_base(config: TrainConfig) -> ResolvedBase:
    """Check --base, --weights and --image-size without building anything."""
    # A table name wins over a same-named folder in the working directory; write ./NAME for that.
    is_table_name = config.base in base_names()
    looks_like_path = "/" in config.base or config.base.endswith(".keras") or Path(config.base).exists()
    if looks_like_path and not is_table_name:
        path = Path(config.base)
        if path.is_dir():
            rundir.check_run_dir(path)
        elif not (path.is_file() and path.suffix == ".keras"):
            raise UsageError(f"--base {path}: no such run dir or .keras file")
        if config.image_size is not None:
            raise UsageError(
                "--image-size cannot be used with an earlier network as base; it keeps its input size"
            )
        shape = rundir.declared_input_shape(path)
        if shape is not None and (
            len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]
        ):
            raise UsageError(
                f"--base {path}: the earlier network must take square RGB images [N, S, S, 3]; got {shape}"
            )
        return ResolvedBase(None, path, 0, rundir.trained_learning_rate(path))
    try:
        spec = get_base(config.base)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    size = config.image_size if config.image_size is not None else spec.default_size
    if size < spec.min_size:
        raise UsageError(
            f"--image-size {size} is below the minimum of {spec.name} ({spec.min_size}px); "
            f"use {spec.min_size} or more (default {spec.default_size})"
        )
    weights = config.weights
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise UsageError(f"--weights {weights}: expected imagenet, none or an existing .h5 file")
    if weights == "none" and config.mode != "scratch":
        # NOTE: a frozen random base gives features that carry almost nothing (BatchNorm in
        # inference mode makes most of them constant): the head learns chance, and that model
        # would export without a word.
        raise UsageError(
            f"--mode {config.mode} with --weights none would train on a frozen random network; "
            "use --mode scratch to train every layer, or --base RUN_DIR to reuse a network you trained"
        )
    if weights == "imagenet" and spec.imagenet_sizes and size not in spec.imagenet_sizes:
        sizes = "/".join(map(str, spec.imagenet_sizes))
        print(
            f"note: {spec.name}'s ImageNet weights exist for {sizes} px; at {size} px Keras loads "
            f"the {spec.default_size} px ones (the convolutions fit any size)",
            flush=True,
        )
    return ResolvedBase(spec, None, size)
