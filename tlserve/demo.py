"""``tlserve demo``: the whole transfer-learning story, offline, on 2 CPU cores.

Data: scikit-learn's 1,797 handwritten digits, each drawn into a 32x32 scene at a random size, angle
and position on a textured, coloured, cluttered background (``tlserve.scenes``): what makes ten
images too few to learn from scratch is what varies around the object, as in photos.
1. source task, digits 0-4 (2,000 scenes): a MobileNetV2 trained from scratch (the "cat-vs-dog net"
   of the story);
2. target task, digits 5-9, with only a few training images per class: that network reused as the
   base (frozen, then finetune), against MobileNetV2 from scratch on the same few images;
3. the best target model exported to a model repository: SavedModel, ONNX fp32 and int8;
4. a tlserve server started on that repository (``tlserve.demo_serving``): held-out digits through
   the native API and TensorFlow Serving's API, photographs answered "unknown", production traffic
   whose hard examples it captures, relabelled and trained on again, exported as version 2 and
   swapped in without a restart; then stopped cleanly.
"""

from __future__ import annotations

import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.demo_serving import serve_demo
from tlserve.errors import TlserveError, UsageError

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
IMAGE_SIZE = 32
SOURCE_PER_CLASS = 400
TARGET_VAL_PER_CLASS = 60
MAX_PER_CLASS = 60
"""The smallest digit class has 174 images: 60 for validation and up to 60 to train on; the source
classes skip the same first 120 and draw their 400 scenes each from the remaining 54 or more."""
PRODUCTION_PER_CLASS = 40
"""Production traffic for the serving part (``tlserve.demo_serving``): target digits 120-159, which
no run trains or validates on."""


def prepare_data(workdir: Path, per_class: list[int], seed: int = 0) -> dict[str, Path]:
    """Write source/, target_val/ and target_train_<n>/ image folders; return their paths. Every
    target image is a different handwritten digit; the source's digits are none of them."""
    from tlserve import scenes

    glyphs = scenes.digit_glyphs(seed)
    rng = np.random.default_rng(seed)
    root = workdir / "data"
    paths = {"source": root / "source", "target_val": root / "target_val", "production": root / "production"}
    reserved = TARGET_VAL_PER_CLASS + max(per_class)
    for d in SOURCE_CLASSES:
        images = scenes.scenes(glyphs[d][reserved:], SOURCE_PER_CLASS, rng, IMAGE_SIZE)
        scenes.write(paths["source"] / f"digit_{d}", images)
    for d in TARGET_CLASSES:
        val = scenes.scenes(glyphs[d][:TARGET_VAL_PER_CLASS], TARGET_VAL_PER_CLASS, rng, IMAGE_SIZE)
        scenes.write(paths["target_val"] / f"digit_{d}", val)
    for n in per_class:
        key = f"target_train_{n}"
        paths[key] = root / key
        for d in TARGET_CLASSES:
            pool = glyphs[d][TARGET_VAL_PER_CLASS : TARGET_VAL_PER_CLASS + n]
            scenes.write(paths[key] / f"digit_{d}", scenes.scenes(pool, n, rng, IMAGE_SIZE))
    for d in TARGET_CLASSES:  # NOTE: after the others, so that adding it changed none of them
        pool = glyphs[d][2 * MAX_PER_CLASS : 2 * MAX_PER_CLASS + PRODUCTION_PER_CLASS]
        scenes.write(
            paths["production"] / f"digit_{d}", scenes.scenes(pool, PRODUCTION_PER_CLASS, rng, IMAGE_SIZE)
        )
    return paths


@dataclass
class Row:
    task: str
    mode: str
    base: str
    per_class: int | str
    accuracy: float
    seconds: float


def train_command(*args: str | Path) -> dict[str, Any]:
    """Run ``tlserve train ARGS`` as a user would type it (printed first, parsed by the command's
    own parser); its run.json. Its errors are raised, for the calling command to report."""
    from tlserve.cli import train
    from tlserve.training import rundir

    argv = list(map(str, args))
    print(f"$ {shlex.join(['tlserve', 'train', *argv])}", flush=True)
    if train.run(train.parse(argv)) != 0:
        raise TlserveError(f"tlserve train {shlex.join(argv)} failed (see above)")
    return rundir.read_run_json(Path(argv[argv.index("--out") + 1]))


def _train(*args: str | Path) -> tuple[float, float]:
    started = time.perf_counter()
    report = train_command(*args)
    return float(report["metrics"]["accuracy"]), time.perf_counter() - started


def format_rows(rows: list[Row]) -> str:
    header = ("task", "mode", "base", "images/class", "val accuracy", "train time (s)")
    body = [(r.task, r.mode, r.base, str(r.per_class), f"{r.accuracy:.3f}", f"{r.seconds:.1f}") for r in rows]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=False)) for x in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


MARKER = ".tlserve-demo"


def prepare_workdir(workdir: Path) -> None:
    """Start from an empty workdir; only a folder an earlier demo made (it holds MARKER) is wiped."""
    if workdir.exists():
        if not workdir.is_dir():
            raise UsageError(f"--workdir {workdir} is a file")
        if any(workdir.iterdir()):
            if not (workdir / MARKER).is_file():
                raise UsageError(
                    f"--workdir {workdir} is not empty and was not made by tlserve demo; "
                    "give a new or empty directory"
                )
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by tlserve demo; the next demo run may delete this folder\n")


def run_demo(workdir: Path, per_class: list[int]) -> list[Row]:
    if not per_class or min(per_class) < 1 or max(per_class) > MAX_PER_CLASS:
        raise UsageError(f"--per-class takes numbers from 1 to {MAX_PER_CLASS}; got {per_class}")
    prepare_workdir(workdir)
    paths = prepare_data(workdir, per_class)
    runs = workdir / "runs"
    runs.mkdir()
    rows: list[Row] = []
    # NOTE: no tuning flag anywhere: what the demo shows is what these commands give a user.
    scratch: tuple[str, ...] = ("--base", "mobilenet_v2", "--weights", "none", "--mode", "scratch")
    scratch += ("--image-size", str(IMAGE_SIZE))
    print("== source task: digits 0-4, MobileNetV2 from scratch ==", flush=True)
    source_run = runs / "source-scratch"
    acc, sec = _train(paths["source"], "--out", source_run, *scratch)
    n_source = len(list(paths["source"].rglob("*.png"))) // len(SOURCE_CLASSES)
    rows.append(Row("source 0-4", "scratch", "mobilenet_v2", f"~{int(n_source * 0.8)}", acc, sec))
    for n in per_class:
        data = paths[f"target_train_{n}"]
        val = ("--val-data", paths["target_val"])
        print(f"\n== target task: digits 5-9, {n} images per class ==", flush=True)
        for mode in ("frozen", "finetune"):
            out = runs / f"target-{n}-{mode}"
            acc, sec = _train(data, "--out", out, "--base", source_run, "--mode", mode, *val)
            rows.append(Row("target 5-9", mode, "source net", n, acc, sec))
        acc, sec = _train(data, "--out", runs / f"target-{n}-scratch", *scratch, *val)
        rows.append(Row("target 5-9", "scratch", "mobilenet_v2", n, acc, sec))
    print()
    print(format_rows(rows))
    print()
    for n in per_class:
        at_n = [r for r in rows if r.per_class == n]
        best = max((r for r in at_n if r.mode != "scratch"), key=lambda r: r.accuracy)
        scratch_row = next(r for r in at_n if r.mode == "scratch")
        verdict = "ahead of" if best.accuracy > scratch_row.accuracy else "NOT ahead of"
        print(
            f"{n} images/class: transfer ({best.mode}) {best.accuracy:.3f} is {verdict} "
            f"scratch {scratch_row.accuracy:.3f} ({best.accuracy - scratch_row.accuracy:+.3f})"
        )
    print(f"\nrun dirs under {runs}; open their history.png, confusion.png and mistakes.png")
    run_dir, published = export_best(workdir, rows, per_class)
    serve_demo(workdir, paths, run_dir, paths[f"target_train_{max(per_class)}"], train_command)
    print_next_steps(workdir, published, paths["target_val"])
    return rows


def print_next_steps(workdir: Path, published: Path, val_dir: Path) -> None:
    sample = sorted((val_dir / f"digit_{TARGET_CLASSES[0]}").glob("*.png"))[0]
    print(
        "\nnext steps, on your own images (one folder per class):\n"
        f"  tlserve train MY_IMAGES --out runs/mine --base {workdir / 'runs' / 'source-scratch'}"
        " --mode finetune\n"
        "  tlserve train MY_PHOTOS --out runs/photos --base mobilenet_v2 --augment flip,rotate,zoom"
        "   # online: ImageNet weights\n"
        "  tlserve export runs/mine --repository models --name mine\n"
        "  tlserve serve --repository models\n"
        "  tlserve predict IMAGE.png --model mine\n"
        f"this demo's model, published as {published} and, after the loop, as version 2 beside it:\n"
        f"  tlserve serve --repository {workdir / 'models'}\n"
        f"  tlserve predict {sample} --model digits\n"
        "the loop on your own server: docs/loop.md"
    )


def export_best(workdir: Path, rows: list[Row], per_class: list[int]) -> tuple[Path, Path]:
    """Publish the best transfer model of the largest target set (SavedModel, ONNX fp32 and int8):
    its run dir and version folder."""
    from tlserve.exporters.export import ExportOptions, export, summary_table

    n = max(per_class)
    best = max((r for r in rows if r.per_class == n and r.mode != "scratch"), key=lambda r: r.accuracy)
    run_dir = workdir / "runs" / f"target-{n}-{best.mode}"
    print(f"\n== exporting {run_dir.name} (val accuracy {best.accuracy:.3f}) to {workdir / 'models'} ==")
    print(f"$ tlserve export {run_dir} --repository {workdir / 'models'} --name digits --int8", flush=True)
    result = export(ExportOptions(run_dir=run_dir, repository=workdir / "models", name="digits", int8=True))
    print(f"\npublished {result.path}")
    print(summary_table(result))
    assert isinstance(result.path, Path)
    return run_dir, result.path
