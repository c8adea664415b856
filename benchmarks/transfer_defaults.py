"""Do the trainer's defaults keep the transfer-learning promise? Defaults vs a small sweep vs scratch.

Three small transfer tasks, all offline, drawn by ``tlserve.scenes``: handwritten digits (scikit-learn's)
or printed letters (Pillow's bundled font) at a random size, angle and position on textured,
coloured, cluttered backgrounds -- what makes ten photos too few to learn from scratch is what varies
around the object, and that is what a pretrained network brings:

  digits 0-4 -> 5-9     a MobileNetV2 trained from scratch on 3,000 scenes of the digits 0-4, reused
                        for the unseen classes 5-9 (same data set, new classes)
  letters -> digits     a MobileNetV2 trained on 3,120 scenes of the 26 capital letters, reused for
                        the ten handwritten digits (different data sets)
  digits 0-4 -> letters the digits 0-4 network reused for the 26 letters (different data sets)

``--suite plain`` runs the earlier tasks instead: upscaled 8x8 digits on black, drawn shapes, and
scikit-image's LFW faces vs non-faces -- easy enough that MobileNetV2 learns them from scratch from
ten images per class (0.85-0.94), so transfer from a small own network barely helps there.

Each target task has N training images per class and a separate validation set. Every target run is
a real ``tlserve train`` (through its Python entry point), and prints its command line. The columns:

  defaults      --mode frozen|finetune with no tuning flag at all
  sweep best    the best of a small sweep of hand-tuning (epochs, patience, learning rates,
                augmentation, unfrozen layers); the sweep's configurations are printed
  scratch       MobileNetV2 from a random initialisation on the same images, with defaults

    python benchmarks/transfer_defaults.py [--per-class 10] [--workdir bench-output/transfer]
           [--quick] (fewer sweep points) [--suite scenes|plain] [--tasks PREFIXES]

Prints the table and writes it, with every run's figures, to WORKDIR/transfer.json. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32


# -- data ---------------------------------------------------------------------------------------
def save(folder: Path, images: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def digits() -> dict[int, list[np.ndarray]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(0)
    out: dict[int, list[np.ndarray]] = {}
    for d in range(10):
        images = data.images[data.target == d][rng.permutation(int((data.target == d).sum()))]
        out[d] = [_gray_to_rgb(np.uint8(np.clip(x * 255 / 16, 0, 255))) for x in images]
    return out


def faces() -> dict[str, list[np.ndarray]]:
    from skimage.data import lfw_subset

    data = lfw_subset()  # 100 faces, then 100 non-faces, 25x25 in [0, 1]
    rng = np.random.default_rng(0)
    pick = {"face": data[:100], "not_face": data[100:]}
    return {k: [_gray_to_rgb(np.uint8(v[i] * 255)) for i in rng.permutation(len(v))] for k, v in pick.items()}


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    image = Image.fromarray(gray, mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image.convert("RGB"))


SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")


def shapes(per_class: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Filled and outlined shapes of random size, position and colour on noisy backgrounds."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {name: [] for name in SHAPES}
    for name in SHAPES:
        for _ in range(per_class):
            background = tuple(int(v) for v in rng.integers(0, 120, 3))
            color = tuple(int(v) for v in rng.integers(130, 256, 3))
            image = Image.new("RGB", (SIZE * 2, SIZE * 2), background)
            draw = ImageDraw.Draw(image)
            r = int(rng.integers(10, 26))
            cx, cy = (int(v) for v in rng.integers(r + 2, 2 * SIZE - r - 2, 2))
            box = (cx - r, cy - r, cx + r, cy + r)
            width = int(rng.integers(3, 7))
            if name == "circle":
                draw.ellipse(box, fill=color)
            elif name == "ring":
                draw.ellipse(box, outline=color, width=width)
            elif name == "square":
                draw.rectangle(box, fill=color)
            elif name == "triangle":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
            elif name == "diamond":
                draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
            else:
                draw.line([(cx - r, cy), (cx + r, cy)], fill=color, width=width)
                draw.line([(cx, cy - r), (cx, cy + r)], fill=color, width=width)
            pixels = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
            pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255)
            out[name].append(pixels.astype(np.uint8))
    return out


@dataclass
class Task:
    name: str
    source: str
    train: Path
    val: Path
    per_class: int


def write_tasks(root: Path, per_class: int) -> tuple[dict[str, Path], list[Task]]:
    d = digits()
    sources = {"digits 0-4": root / "source-digits04", "shapes": root / "source-shapes"}
    for k in range(5):
        save(sources["digits 0-4"] / f"digit_{k}", d[k])
    for name, images in shapes(150).items():
        save(sources["shapes"] / name, images)
    tasks = []
    # digits 5-9: the source saw none of them
    t = Task("digits 0-4 -> 5-9", "digits 0-4", root / "digits59-train", root / "digits59-val", per_class)
    for k in range(5, 10):
        save(t.val / f"digit_{k}", d[k][:60])
        save(t.train / f"digit_{k}", d[k][60 : 60 + per_class])
    tasks.append(t)
    # all ten digits from a network that has seen shapes only
    t = Task("shapes -> digits", "shapes", root / "digits-train", root / "digits-val", per_class)
    for k in range(10):
        save(t.val / f"digit_{k}", d[k][100:150])
        save(t.train / f"digit_{k}", d[k][150 : 150 + per_class])
    tasks.append(t)
    f = faces()
    t = Task("digits 0-4 -> faces", "digits 0-4", root / "faces-train", root / "faces-val", per_class)
    for k, images in f.items():
        save(t.val / k, images[:60])
        save(t.train / k, images[60 : 60 + per_class])
    tasks.append(t)
    return sources, tasks


def write_scene_tasks(root: Path, per_class: int) -> tuple[dict[str, Path], list[Task]]:
    from tlserve import scenes

    digit = scenes.digit_glyphs()
    letters = scenes.letter_glyphs()
    sources = {"digits 0-4": root / "source-digits04", "letters": root / "source-letters"}
    rng = np.random.default_rng(1)
    for k in range(5):  # NOTE: the tasks that reuse this network have none of the digits 0-4 as targets
        save(sources["digits 0-4"] / f"digit_{k}", scenes.scenes(digit[k][100:], 600, rng, SIZE))
    for name, glyph in letters.items():
        save(sources["letters"] / f"letter_{name}", scenes.scenes([glyph], 120, rng, SIZE))
    tasks = []
    t = Task("digits 0-4 -> 5-9", "digits 0-4", root / "digits59-train", root / "digits59-val", per_class)
    rng = np.random.default_rng(2)
    for k in range(5, 10):
        save(t.val / f"digit_{k}", scenes.scenes(digit[k][:60], 60, rng, SIZE))
        save(t.train / f"digit_{k}", scenes.scenes(digit[k][60 : 60 + per_class], per_class, rng, SIZE))
    tasks.append(t)
    t = Task("letters -> digits", "letters", root / "digits-train", root / "digits-val", per_class)
    rng = np.random.default_rng(3)
    for k in range(10):
        save(t.val / f"digit_{k}", scenes.scenes(digit[k][:40], 40, rng, SIZE))
        save(t.train / f"digit_{k}", scenes.scenes(digit[k][60 : 60 + per_class], per_class, rng, SIZE))
    tasks.append(t)
    t = Task("digits 0-4 -> letters", "digits 0-4", root / "letters-train", root / "letters-val", per_class)
    rng = np.random.default_rng(4)
    for name, glyph in letters.items():
        save(t.val / f"letter_{name}", scenes.scenes([glyph], 20, rng, SIZE))
        save(t.train / f"letter_{name}", scenes.scenes([glyph], per_class, rng, SIZE))
    tasks.append(t)
    return sources, tasks


SUITES = {"scenes": write_scene_tasks, "plain": write_tasks}


# -- runs ---------------------------------------------------------------------------------------
@dataclass
class Result:
    task: str
    label: str
    command: str
    accuracy: float
    seconds: float
    kept: str


def command_line(data: Path, out: Path, flags: dict[str, Any]) -> str:
    parts = ["tlserve", "train", str(data), "--out", str(out)]
    for key, value in flags.items():
        parts += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, tuple) else str(value)]
    return shlex.join(parts)


def train(data: Path, out: Path, flags: dict[str, Any]) -> tuple[float, float, str]:
    """One ``tlserve train`` through the CLI's own entry point, its output kept out of the table."""
    from tlserve.demo import train_command

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        report = train_command(*shlex.split(command_line(data, out, flags))[2:], "--overwrite")
    kept = "; ".join(f"{p['name']} kept {p['kept_epoch']}/{p['epochs_run']}" for p in report["phases"])
    return float(report["metrics"]["accuracy"]), time.perf_counter() - started, kept


def sweep(mode: str, quick: bool) -> list[dict[str, Any]]:
    """Hand-tuning a user might try: fixed epochs and patience, other learning rates."""
    points: list[dict[str, Any]] = []
    if mode == "frozen":
        for lr in (1e-3, 1e-2) if quick else (1e-3, 3e-3, 1e-2):
            for epochs, patience in ((50, 10), (200, 200)):
                points.append({"epochs": epochs, "patience": patience, "lr": lr, "augment": "none"})
        points.append({"epochs": 100, "patience": 20, "lr": 3e-3, "augment": "rotate,zoom,translate"})
    else:
        for ft_lr in (1e-4, 1e-3) if quick else (3e-5, 1e-4, 3e-4, 1e-3):
            for unfreeze in ("all",) if quick else ("30", "all"):
                points.append(
                    {"fine_tune_lr": ft_lr, "unfreeze": unfreeze, "fine_tune_epochs": 60, "patience": 15}
                )
    return points


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("bench-output/transfer"))
    parser.add_argument("--quick", action="store_true", help="fewer sweep points")
    parser.add_argument("--tasks", default="", help="comma-separated task-name prefixes (default: all)")
    parser.add_argument(
        "--suite", choices=sorted(SUITES), default="scenes", help="the task set (default scenes)"
    )
    opts = parser.parse_args()
    started = time.perf_counter()
    if opts.workdir.exists():
        shutil.rmtree(opts.workdir)
    data = opts.workdir / "data"
    sources, tasks = SUITES[opts.suite](data, opts.per_class)
    if opts.tasks:
        tasks = [t for t in tasks if any(t.name.startswith(p) for p in opts.tasks.split(","))]
    runs = opts.workdir / "runs"
    results: list[Result] = []
    source_runs: dict[str, Path] = {}
    scratch = {"base": "mobilenet_v2", "weights": "none", "mode": "scratch", "image_size": SIZE}
    for name in sorted({t.source for t in tasks}):
        out = runs / f"source-{name.split()[0]}"
        print(f"$ {command_line(sources[name], out, scratch)}", flush=True)
        acc, sec, kept = train(sources[name], out, scratch)
        print(f"  source {name}: val accuracy {acc:.3f} in {sec:.0f} s ({kept})", flush=True)
        source_runs[name] = out
    table = []
    for task in tasks:
        slug = task.train.name
        row: dict[str, Any] = {"task": task.name, "per_class": task.per_class}
        configs: list[tuple[str, dict[str, Any]]] = [("scratch", {**scratch, "val_data": task.val})]
        for mode in ("frozen", "finetune"):
            common = {"base": source_runs[task.source], "mode": mode, "val_data": task.val}
            configs.append((f"{mode} defaults", common))
            configs += [(f"{mode} sweep {i}", {**common, **p}) for i, p in enumerate(sweep(mode, opts.quick))]
        for label, flags in configs:
            out = runs / f"{slug}-{label.replace(' ', '-')}"
            cmd = command_line(task.train, out, flags)
            acc, sec, kept = train(task.train, out, flags)
            results.append(Result(task.name, label, cmd, acc, sec, kept))
            print(f"  {task.name:<20} {label:<18} {acc:.3f}  {sec:5.0f} s  {kept}", flush=True)
            if label.endswith("defaults") or label == "scratch":
                print(f"    $ {cmd}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        by = {r.label: r.accuracy for r in results if r.task == task.name}
        row["scratch"] = by["scratch"]
        for mode in ("frozen", "finetune"):
            row[f"{mode}_default"] = by[f"{mode} defaults"]
            row[f"{mode}_sweep_best"] = max(v for k, v in by.items() if k.startswith(f"{mode} sweep"))
        table.append(row)
    print()
    print(format_table(table))
    print(f"\n{len(results) + len(source_runs)} training runs in {time.perf_counter() - started:.0f} s")
    for i, mode in enumerate(("frozen", "finetune")):
        for j, point in enumerate(sweep(mode, opts.quick)):
            print(f"{mode} sweep {j}: {point}" if i or j else f"sweeps: {mode} sweep {j}: {point}")
    report = {"table": table, "runs": [asdict(r) for r in results], "argv": sys.argv[1:]}
    (opts.workdir / "transfer.json").write_text(json.dumps(report, indent=2) + "\n")


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("task", "img/class", "mode", "defaults", "sweep best", "scratch", "vs scratch", "vs sweep")
    body = []
    for r in rows:
        for mode in ("frozen", "finetune"):
            d, b = r[f"{mode}_default"], r[f"{mode}_sweep_best"]
            body.append(
                (r["task"], str(r["per_class"]), mode, f"{d:.3f}", f"{b:.3f}", f"{r['scratch']:.3f}",
                 f"{d - r['scratch']:+.3f}", f"{d - b:+.3f}")
            )  # fmt: skip
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) for x in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
