"""`make bench`: measure the server at its limits and write docs/performance.md (tables and plots).

MobileNetV2 at 224 px (random weights, calibrated BatchNorm), exported once as SavedModel, ONNX fp32
and int8, then, side by side in one run on this machine:

1. the server vs onnxruntime called in-process: batch-1 latency; throughput over concurrency 1-32;
2. dynamic batching on and off, and its delay; onnxruntime intra-op threads vs concurrency;
3. the APIs side by side (TF Serving, OIP, native) with FP32 and UINT8 tensors and JPEG input;
4. onnxruntime fp32 vs int8 vs the TensorFlow backend, served and in-process;
5. image decoding: full decode + resize vs the fast JPEG path, on 12-megapixel and small JPEGs;
6. cold start: process start to READY, and RSS, for the ONNX model and the SavedModel;
7. what prediction monitoring and hard-example capture cost (benchmarks/monitoring_overhead.py);
8. where the server's CPU goes under load (py-spy), when py-spy is installed.

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

import monitoring_overhead
import numpy as np
from performance_report import write_report
from PIL import Image

from tlserve import repository as repo
from tlserve.service import messages
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
                                 ("TF Serving Predict, UINT8", "tfs", "uint8"), ("OIP ModelInfer, UINT8", "v2", "uint8"),
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

    print("prediction monitoring and capture ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="tlserve-monitoring-") as tmp:
        r["monitoring"] = monitoring_overhead.measure(Path(tmp), rounds=3, seconds=s)
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
