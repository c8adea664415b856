"""`make bench`: measure the server at its limits and write docs/performance.md (tables and plots).

MobileNetV2 at 224 px (random weights, calibrated BatchNorm), exported once as SavedModel, ONNX fp32
and int8, then, side by side in one run on this machine:

1. the server vs onnxruntime called in-process: batch-1 latency; throughput over concurrency 1-32;
2. dynamic batching on and off, and its delay; onnxruntime intra-op threads vs concurrency;
3. the APIs side by side (TF Serving, OIP, native) with tensor and JPEG input;
4. onnxruntime fp32 vs int8 vs the TensorFlow backend, served and in-process;
5. image decoding: full decode + resize vs the fast JPEG path, on 12-megapixel and small JPEGs;
6. cold start: process start to READY, and RSS, for the ONNX model and the SavedModel;
7. where the server's CPU goes under load (py-spy), when py-spy is installed.

Every server figure comes from `tlserve bench` (closed loop, warm-up excluded) against a
`tlserve serve` child process on 127.0.0.1; the load generator shares the cores with the server, as
any loopback benchmark does. Nothing here asserts; the goals are printed with the figures.

    python benchmarks/performance.py [--seconds 5] [--workdir bench-output/performance] [--out docs/performance.md]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from PIL import Image

from tlserve import repository as repo
from tlserve.service.bench import messages
from tlserve.service.bench.echo import echo_floor_ms
from tlserve.service.bench.inprocess import batch_sweep
from tlserve.service.bench.load import p50_ms
from tlserve.service.bench.report import cpu_model
from tlserve.service.launch import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
NAME = "mobilenet_v2_224"
SIZE = 224
CONCURRENCY = [1, 2, 4, 8, 16, 32]
Figures = dict[str, Any]


# --- set-up ---------------------------------------------------------------------------------------
def build_repository(workdir: Path) -> Path:
    """MobileNetV2 224 as SavedModel + ONNX fp32 + int8, exported once and reused by later runs."""
    repository = workdir / "models"
    if repo.versions(repository / NAME):
        return repository
    from tlserve.exporters.export import ExportOptions, export
    from tlserve.training.bases import get_base
    from tlserve.training.synthetic import make_run_dir

    print("exporting MobileNetV2 224 (SavedModel, ONNX fp32, int8), once ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "calibration" / "any"
        calibration.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(32):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
                calibration / f"{i}.png"
            )
        run_dir, _ = make_run_dir(get_base("mobilenet_v2"), SIZE, Path(tmp))
        export(ExportOptions(run_dir=run_dir, repository=repository, name=NAME, int8=True,
                             calibration_data=calibration.parent))  # fmt: skip
    return repository


def photo_like_jpeg(width: int, height: int) -> bytes:
    """scikit-learn's sample photograph enlarged, with sensor-like noise (as tests/service/test_images.py)."""
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg")).resize((width, height), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 3, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray((np.asarray(photo) + noise).clip(0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=90
    )
    return buffer.getvalue()


@contextmanager
def server(repository: Path, *args: str) -> Iterator[ServerProcess]:
    """``tlserve serve``, ready to answer for NAME; stopped on the way out."""
    with ServerProcess(repository, "--log-level", "INFO", *args) as process:
        process.wait_ready(NAME, timeout_s=300)
        yield process


def bench(target: str, seconds: float, *args: str, workdir: Path) -> Figures:
    """One `tlserve bench` run; its JSON document."""
    out = workdir / "last-bench.json"
    command = [sys.executable, "-m", "tlserve", "bench", "--model", NAME, "--server", target,
               "--duration", str(seconds), "--warmup", "1", "--json", str(out), *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(out.read_text())


def summary(doc: Figures, side: str = "server") -> Figures:
    figures = doc[side]
    return {"p50": figures["latency_ms"].get("p50"), "p99": figures["latency_ms"].get("p99"),
            "rps": figures["requests_per_s"], "ips": figures["images_per_s"], "errors": figures["errors"],
            "codes": figures["errors_by_code"], "client_cpu": figures.get("client_cpu_percent")}  # fmt: skip


# --- the measurements -----------------------------------------------------------------------------
def in_process_tensorflow(savedmodel: Path, repeats: int) -> float:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(savedmodel))
    signature = loaded.signatures["serving_default"]
    one = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32))
    return p50_ms(lambda: signature(one), repeats)


def decoding(repeats: int) -> Figures:
    import tensorflow as tf

    from tlserve.service.images import decode
    from tlserve.training.data import RESIZE_METHOD
    from tlserve.training.data import decode as tf_decode

    rows = {}
    stripes = np.zeros((3000, 4000, 3), np.uint8)
    stripes[:, ::3] = 255  # fine detail: one-pixel white lines every 3 px
    buffer = io.BytesIO()
    Image.fromarray(stripes).save(buffer, "JPEG", quality=90)
    images = {"12 MP (4000x3000)": photo_like_jpeg(4000, 3000), "0.3 MP (640x480)": photo_like_jpeg(640, 480),
              "12 MP fine detail (3 px stripes)": buffer.getvalue()}  # fmt: skip
    for label, data in images.items():
        full = p50_ms(lambda: decode(data, SIZE, SIZE, ["JPEG"], 10**8, jpeg_draft=0), repeats)  # noqa: B023
        fast = p50_ms(lambda: decode(data, SIZE, SIZE, ["JPEG"], 10**8, jpeg_draft=4), repeats)  # noqa: B023
        reference = tf.image.resize(tf_decode(data), (SIZE, SIZE), method=RESIZE_METHOD).numpy()
        diff = np.abs(decode(data, SIZE, SIZE, ["JPEG"], 10**8, jpeg_draft=4) - reference)
        diff_full = np.abs(decode(data, SIZE, SIZE, ["JPEG"], 10**8, jpeg_draft=0) - reference)
        rows[label] = {"bytes": len(data), "full_ms": full, "fast_ms": fast, "ratio": fast / full,
                       "max_levels": float(diff.max()), "mean_levels": float(diff.mean()),
                       "full_max_levels": float(diff_full.max()), "full_mean_levels": float(diff_full.mean())}  # fmt: skip
    return rows


def cold_start(repository: Path, *args: str) -> Figures:
    started = time.perf_counter()
    with server(repository, *args) as process:
        return {"ready_s": time.perf_counter() - started, "rss_mb": process.rss_mb()}


def profile(target: str, pid: int, seconds: float, workdir: Path) -> Figures | None:
    """py-spy's samples of the server while 16 clients call it: share of samples per leaf function."""
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if pyspy is None:
        return None
    raw = workdir / "profile.txt"
    record = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                               "--format", "raw", "--output", str(raw), "--nonblocking"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.5)
    bench(target, seconds, "--api", "tfs", "--concurrency", "16", workdir=workdir)
    _, err = record.communicate(timeout=120)
    if record.returncode != 0 or not raw.exists():
        return {"error": err.strip()[-300:]}
    return analyse_profile(raw)


def _where(frame: str) -> str:
    """'function (file.py' from py-spy's 'function (path/file.py:line)'."""
    name, _, location = frame.partition(" (")
    return f"{name} ({location.split(':')[0].split('/')[-1]})"


def analyse_profile(raw: Path) -> Figures:
    """Share of samples per leaf function, and per part of the server by the leaf's module (a Cython
    or C call shows as the Python frame that made it: gRPC's I/O as the event loop's callbacks)."""
    leaves: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        leaves[_where(leaf)] += n
        area = ("onnxruntime run (its compute threads)" if "onnxruntime" in leaf else
                "image decoding" if "service/images.py" in leaf else
                "request conversion (tlserve codecs)" if "_codec.py" in leaf else
                "tlserve handlers, batcher, interceptor" if "tlserve/" in leaf else
                "asyncio event loop (incl. gRPC's Cython I/O, (de)serialization)" if any(
                    m in leaf for m in ("asyncio", "selector", "grpc")) else
                "thread pools (hand-offs, idle)" if "thread" in leaf else "other")  # fmt: skip
        areas[area] += n
    return {"samples": total, "leaves": leaves.most_common(12), "areas": areas.most_common()}


# --- the report -----------------------------------------------------------------------------------
def plot_concurrency(points: dict[int, Figures], inproc: Figures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(points)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(xs, [points[c]["ips"] for c in xs], "o-", label="server (TF Serving Predict, batch 1 per call)")
    left.axhline(inproc["best_ips"], color="grey", ls="--",
                 label=f"in-process onnxruntime, best batch ({inproc['best_batch']})")  # fmt: skip
    left.axhline(0.9 * inproc["best_ips"], color="grey", ls=":", label="goal: 0.9 of it")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="images/s", title="Throughput")
    left.set_xticks(xs, [str(x) for x in xs])
    left.legend(fontsize=7)
    right.plot(xs, [points[c]["p50"] for c in xs], "o-", label="p50")
    right.plot(xs, [points[c]["p99"] for c in xs], "s--", label="p99")
    right.axhline(inproc["p50"], color="grey", ls="--", label="in-process batch-1 p50")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="Latency")
    right.set_xticks(xs, [str(x) for x in xs])
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(rows: dict[str, float], title: str, unit: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    names = list(rows)
    ax.barh(names, [rows[n] for n in names], color="#4c72b0")
    for i, n in enumerate(names):
        ax.text(rows[n], i, f" {rows[n]:.1f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=unit, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def write_report(r: Figures, out: Path) -> None:
    images = out.parent / "performance"
    images.mkdir(parents=True, exist_ok=True)
    plot_concurrency(r["concurrency"], r["inprocess"], images / "concurrency.png")
    plot_bars({k.removesuffix(" c16"): v["ips"] for k, v in r["apis"].items() if k.endswith("c16")},
              "APIs and inputs at 16 concurrent clients", "images/s", images / "apis.png")  # fmt: skip
    inproc, c1, c16 = r["inprocess"], r["concurrency"][1], r["concurrency"][16]
    p50_ratio, tput_ratio = c1["p50"] / inproc["p50"], c16["ips"] / inproc["best_ips"]
    tf_ratio = r["tf_inprocess_ms"] / inproc["p50"]
    onnx_cold, tf_cold = r["cold"]["onnx"], r["cold"]["savedmodel"]
    decode_12 = r["decoding"]["12 MP (4000x3000)"]
    fine = r["decoding"].get(
        "12 MP fine detail (3 px stripes)", {"max_levels": float("nan"), "mean_levels": float("nan")}
    )
    m = r["machine"]
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (benchmarks/performance.py); every figure below is from the run it",
        f"describes, made side by side in one run. Run: {m['date']}; {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gb']:.0f} GB; Python {m['python']}; {m['libraries']}.",
        "",
        "Model: MobileNetV2 at 224 px (random weights with calibrated BatchNorm: the same compute as a "
        "trained one), exported by `tlserve export` as SavedModel, ONNX fp32 and ONNX int8. Server figures "
        f"come from `tlserve bench` ({r['seconds']:.0f} s measured after 1 s warm-up, closed loop, batch 1 per "
        "call) against `tlserve serve` on 127.0.0.1 with default settings unless stated; the load generator "
        "shares the cores with the server. CPU only (no GPU was lent to this task).",
        "",
        "## Goals",
        "",
        "| Goal | Measured | Met |",
        "|---|---|---|",
        f"| server p50 / in-process p50 at batch 1 ≤ 1.10 | {c1['p50']:.2f} / {inproc['p50']:.2f} ms = "
        f"**{p50_ratio:.2f}** | {yes(p50_ratio <= 1.10)} |",
        f"| server throughput at concurrency 16 / in-process best batched ≥ 0.90 | {c16['ips']:.0f} / "
        f"{inproc['best_ips']:.0f} images/s = **{tput_ratio:.2f}** | {yes(tput_ratio >= 0.90)} |",
        f"| ORT / TensorFlow speed at batch 1 ≥ 3 | TF {r['tf_inprocess_ms']:.2f} ms / ORT {inproc['p50']:.2f} ms = "
        f"**{tf_ratio:.1f}×** | {yes(tf_ratio >= 3)} |",
        f"| cold start (ONNX) ≤ 2 s with RSS ≤ 250 MB | **{onnx_cold['ready_s']:.2f} s, {onnx_cold['rss_mb']:.0f} MB** | "
        f"{yes(onnx_cold['ready_s'] <= 2 and onnx_cold['rss_mb'] <= 250)} |",
        f"| fast JPEG path ≤ 0.3 of full decode on 12 MP, with the serving contract's JPEG parity (≤ 12 levels "
        f"max, ≤ 1.5 mean) | photo-like: {decode_12['fast_ms']:.1f} / {decode_12['full_ms']:.1f} ms = "
        f"**{decode_12['ratio']:.2f}**, {decode_12['max_levels']:.1f} max, {decode_12['mean_levels']:.2f} mean; fine "
        f"detail: {fine['max_levels']:.0f} max, {fine['mean_levels']:.1f} mean | "
        f"{yes(decode_12['ratio'] <= 0.3 and decode_12['max_levels'] <= 12 and decode_12['mean_levels'] <= 1.5)} on "
        f"photo-like images; **no** on fine detail, so it is off by default (`jpeg_draft`) |",
        "",
        "## Server vs in-process onnxruntime",
        "",
        f"In-process: one onnxruntime session (default threads) called directly: batch-1 p50 {inproc['p50']:.2f} ms; "
        "best throughput over batch sizes "
        + ", ".join(f"{b}: {v:.0f}" for b, v in inproc["by_batch"].items())
        + f" images/s (best at batch {inproc['best_batch']}).",
        "",
        "![throughput and latency over concurrency](performance/concurrency.png)",
        "",
        "| Concurrent clients | images/s | p50 (ms) | p99 (ms) | errors | load generator CPU (% of a core) |",
        "|---|---|---|---|---|---|",
    ]
    for c, f in sorted(r["concurrency"].items()):
        lines.append(
            f"| {c} | {f['ips']:.1f} | {_f(f['p50'])} | {_f(f['p99'])} | {f['errors']} | {_f(f['client_cpu'], 0)} |"
        )
    echo = r["echo_floor_ms"]
    lines += [
        "",
        f"The transport's own floor: a bare Python gRPC server (benchmarks/grpc_echo.py) answering the same "
        f"{r['payload_kb']:.0f} KB Predict request with nothing takes {echo:.2f} ms at p50; in-process + that floor "
        f"= {(inproc['p50'] + echo) / inproc['p50']:.2f} × in-process, the best ratio any Python gRPC server "
        "could reach here.",
    ]
    lines += ["", "## Dynamic batching and threads", "",
              "| Server settings | Clients | images/s | p50 (ms) | p99 (ms) |", "|---|---|---|---|---|"]  # fmt: skip
    for f in r["settings"]:
        lines.append(f"| {f['label']} | {f['clients']} | {f['ips']:.1f} | {_f(f['p50'])} | {_f(f['p99'])} |")
    lines += ["", "## APIs and inputs", "", "![APIs](performance/apis.png)", "",
              "| API, input | 1 client p50 (ms) | 16 clients images/s | 16 clients p99 (ms) |", "|---|---|---|---|"]  # fmt: skip
    for label in r["api_labels"]:
        one, many = r["apis"][f"{label} c1"], r["apis"][f"{label} c16"]
        lines.append(f"| {label} | {_f(one['p50'])} | {many['ips']:.1f} | {_f(many['p99'])} |")
    lines += ["", "JPEG input: a 224x224 photo-like JPEG, decoded and resized by the server (its image path "
              "costs a decode per image on top of the model).", "",
              "## Backends and precision", "",
              "| Backend, artifact | served, 1 client p50 (ms) | served, 16 clients images/s | in-process batch-1 (ms) |",
              "|---|---|---|---|"]  # fmt: skip
    for label, f in r["backends"].items():
        lines.append(f"| {label} | {_f(f['p50'])} | {f['ips']:.1f} | {_f(f.get('inprocess_ms'))} |")
    lines += ["", "## Image decoding: full vs the fast JPEG path", "",
              "Per image, decode + resize to 224x224 in the server's decoder (`tlserve.service.images`); parity "
              "against the exported `predict_images` signature (TensorFlow decode + resize).", "",
              "| JPEG | bytes | full (ms) | fast (ms) | fast / full | fast vs signature: max / mean levels | full vs signature |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, f in r["decoding"].items():
        lines.append(f"| {label} | {f['bytes']:,} | {f['full_ms']:.1f} | {f['fast_ms']:.1f} | {f['ratio']:.2f} | "
                     f"{f['max_levels']:.1f} / {f['mean_levels']:.2f} | {f['full_max_levels']:.1f} / {f['full_mean_levels']:.2f} |")  # fmt: skip
    lines += ["", "## Cold start", "", "From starting `tlserve serve` to its health service saying SERVING for the "
              "model (imports, load, warm-up at batch 1 and the dynamic batch size included), and the process's RSS "
              "then: most of it is onnxruntime's memory arena, sized by the largest batch it has run.", "",
              "| Model | backend | seconds to READY | RSS (MB) |", "|---|---|---|---|",
              f"| ONNX fp32 | onnxruntime | {onnx_cold['ready_s']:.2f} | {onnx_cold['rss_mb']:.0f} |",
              f"| ONNX fp32, `--dynamic-batch-size 32` (warmed up at 32) | onnxruntime | {r['cold']['onnx32']['ready_s']:.2f} | "
              f"{r['cold']['onnx32']['rss_mb']:.0f} |",
              f"| SavedModel | tensorflow | {tf_cold['ready_s']:.2f} | {tf_cold['rss_mb']:.0f} |"]  # fmt: skip
    prof = r.get("profile")
    if prof and "leaves" in prof:
        lines += ["", "## Where the server's CPU goes (16 clients)", "",
                  f"py-spy sampled the server process (all threads, {prof['samples']:,} samples) while 16 clients "
                  "called TF Serving Predict.", "", "| Part of the stack | share of samples |", "|---|---|"]  # fmt: skip
        for area, n in prof["areas"]:
            lines.append(f"| {area} | {100 * n / prof['samples']:.1f} % |")
        lines += ["", "| Leaf function (file) | share |", "|---|---|"]
        for leaf, n in prof["leaves"]:
            lines.append(f"| `{leaf.replace('|', '/')}` | {100 * n / prof['samples']:.1f} % |")
    elif prof:
        lines += ["", f"py-spy could not sample the server: {prof['error']}"]
    lines += ["", "## What holds the rest back", "", *r["notes"]]
    text = "\n".join(lines) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    Path(tmp.name).replace(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per server figure")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-output" / "performance")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--notes", type=Path, default=Path(__file__).with_name("performance_notes.md"),
                        help="the hand-written analysis appended under 'What holds the rest back'")  # fmt: skip
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the report from the last run's figures.json (and profile), measuring nothing")  # fmt: skip
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        r = json.loads((args.workdir / "figures.json").read_text())
        r["concurrency"] = {int(k): v for k, v in r["concurrency"].items()}
        if (args.workdir / "profile.txt").exists():
            r["profile"] = analyse_profile(args.workdir / "profile.txt")
        r["notes"] = args.notes.read_text().strip().splitlines() if args.notes.exists() else ["(no notes)"]
        write_report(r, args.out)
        print(f"wrote {args.out} from {args.workdir / 'figures.json'}")
        return 0
    begun = time.perf_counter()
    repository = build_repository(args.workdir)
    version_dir = repository / NAME / str(repo.versions(repository / NAME)[-1])
    s = args.seconds
    r: Figures = {"seconds": s}
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    libs = ", ".join(f"{p} {version(p)}" for p in ("onnxruntime", "tensorflow", "grpcio", "numpy", "pillow"))
    r["machine"] = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
                    "cores": os.cpu_count(), "memory_gb": mem, "python": platform.python_version(), "libraries": libs}  # fmt: skip

    print("in-process onnxruntime and TensorFlow ...", flush=True)
    r["inprocess"] = batch_sweep(version_dir / repo.ONNX_FILES["fp32"], SIZE, SIZE, 100)
    int8_file = version_dir / repo.ONNX_FILES["int8"]
    int8 = batch_sweep(int8_file, SIZE, SIZE, 100) if int8_file.exists() else None
    r["tf_inprocess_ms"] = in_process_tensorflow(version_dir, 50)  # the version dir is the SavedModel

    def run(target: str, *extra: str) -> Figures:
        return summary(bench(target, s, *extra, workdir=args.workdir))

    print("gRPC echo floor ...", flush=True)
    one = np.random.default_rng(1).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    payload = messages.predict_request(NAME, one).SerializeToString()
    r["payload_kb"] = len(payload) / 1024
    r["echo_floor_ms"] = echo_floor_ms(payload, 200)

    print("server, default settings: concurrency sweep, APIs, profile ...", flush=True)
    r["apis"], r["api_labels"], r["backends"] = {}, [], {}
    with server(repository, "--precision", "fp32") as srv:
        r["concurrency"] = {c: run(srv.target, "--api", "tfs", "--concurrency", str(c)) for c in CONCURRENCY}
        for label, api, kind in (("TF Serving Predict, tensor", "tfs", "tensor"), ("OIP ModelInfer, tensor", "v2", "tensor"),
                                 ("TF Serving Predict, JPEG", "tfs", "jpeg"), ("OIP ModelInfer, JPEG", "v2", "jpeg"),
                                 ("native Classify, JPEG", "native", "jpeg")):  # fmt: skip
            r["api_labels"].append(label)
            for c in (1, 16):
                r["apis"][f"{label} c{c}"] = run(
                    srv.target, "--api", api, "--input", kind, "--concurrency", str(c)
                )
        r["profile"] = profile(srv.target, srv.pid, 8, args.workdir)
    r["settings"] = [{"label": "defaults (dynamic batch 8, delay 0, intra-op threads: all cores)", "clients": c,
                      **r["concurrency"][c]} for c in (1, 16)]  # fmt: skip
    for label, extra in (("dynamic batch 32", ["--dynamic-batch-size", "32"]), ("batching off", ["--no-batching"]),
                         ("batching, delay 2 ms", ["--max-batch-delay-s", "0.002"]),
                         ("intra-op threads 1", ["--intra-op-threads", "1"])):  # fmt: skip
        print(f"server, {label} ...", flush=True)
        with server(repository, "--precision", "fp32", *extra) as srv:
            for c in (1, 16):
                r["settings"].append(
                    {"label": label, "clients": c, **run(srv.target, "--concurrency", str(c))}
                )
    r["backends"]["onnxruntime, fp32"] = {**r["concurrency"][1], "ips": r["concurrency"][16]["ips"],
                                          "inprocess_ms": r["inprocess"]["p50"]}  # fmt: skip
    if int8 is not None:
        print("server, int8 ...", flush=True)
        with server(repository, "--precision", "int8") as srv:
            one, many = run(srv.target, "--concurrency", "1"), run(srv.target, "--concurrency", "16")
            r["backends"]["onnxruntime, int8"] = {**one, "ips": many["ips"], "inprocess_ms": int8["p50"]}
    print("server, TensorFlow backend ...", flush=True)
    with server(repository, "--backend", "tensorflow") as srv:
        one, many = run(srv.target, "--concurrency", "1"), run(srv.target, "--concurrency", "16")
        r["backends"]["TensorFlow SavedModel"] = {
            **one,
            "ips": many["ips"],
            "inprocess_ms": r["tf_inprocess_ms"],
        }

    print("image decoding ...", flush=True)
    r["decoding"] = decoding(20)
    print("cold starts ...", flush=True)
    r["cold"] = {"onnx": cold_start(repository, "--precision", "fp32"),
                 "onnx32": cold_start(repository, "--precision", "fp32", "--dynamic-batch-size", "32"),
                 "savedmodel": cold_start(repository, "--backend", "tensorflow")}  # fmt: skip
    r["notes"] = args.notes.read_text().strip().splitlines() if args.notes.exists() else ["(no notes)"]
    (args.workdir / "figures.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    write_report(r, args.out)
    print(f"wrote {args.out} in {time.perf_counter() - begun:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
