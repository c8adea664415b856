"""Export speed figures: onnxruntime vs TensorFlow at batch 1, and int8 vs fp32 throughput.

For the demo model (a run dir from `make demo`, real validation data, so int8 accuracy is measured)
and for MobileNetV2 and ResNet50 at 224 px (random weights with calibrated BatchNorm: speed only),
export SavedModel + ONNX fp32 + int8 with `tlserve export`, then time, side by side in one process:
TensorFlow SavedModel and onnxruntime fp32/int8 at batch 1 (median latency), and onnxruntime
fp32/int8 throughput at batch 8. Prints a table; asserts nothing.

    python benchmarks/export_speed.py [--demo-run demo-output/runs/target-20-finetune]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import onnxruntime as ort
import tensorflow as tf
from PIL import Image

from tlserve import repository as repo
from tlserve.exporters.export import ExportOptions, export
from tlserve.service.bench.load import p50_ms
from tlserve.training.bases import get_base
from tlserve.training.synthetic import make_run_dir


def random_images(folder: Path, size: int, count: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def measure(name: str, run_dir: Path, root: Path, calibration: Path | None) -> dict[str, object]:
    result = export(
        ExportOptions(
            run_dir=run_dir, repository=root / "repo", name=name, int8=True, calibration_data=calibration
        )
    )
    version = result.path
    size = result.manifest.input.shape[1]
    signature = tf.saved_model.load(str(version)).signatures[repo.SIGNATURE_PIXELS]
    fp32 = ort.InferenceSession(str(version / "model.onnx"), providers=[repo.CPU])
    int8 = ort.InferenceSession(str(version / "model.int8.onnx"), providers=[repo.CPU])
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    eight = rng.uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    repeats = 30 if size < 100 else 15
    tf_ms = p50_ms(lambda: signature(image=tf.constant(one)), repeats, warmup=3)
    fp32_ms = p50_ms(lambda: fp32.run(None, {"image": one}), repeats, warmup=3)
    int8_ms = p50_ms(lambda: int8.run(None, {"image": one}), repeats, warmup=3)
    fp32_b8 = p50_ms(lambda: fp32.run(None, {"image": eight}), repeats, warmup=3)
    int8_b8 = p50_ms(lambda: int8.run(None, {"image": eight}), repeats, warmup=3)
    artifact = result.manifest.artifact("onnx", "int8")
    delta = artifact.accuracy.get("delta_points") if artifact else None
    return {
        "model": name,
        "size": size,
        "tf_ms": tf_ms,
        "fp32_ms": fp32_ms,
        "int8_ms": int8_ms,
        "ort_vs_tf": tf_ms / fp32_ms,
        "fp32_ips": 8000 / fp32_b8,
        "int8_ips": 8000 / int8_b8,
        "int8_vs_fp32": fp32_b8 / int8_b8,
        "int8_delta_points": delta,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo-run", type=Path, default=Path("demo-output/runs/target-20-finetune"))
    parser.add_argument("--models", default="demo,mobilenet_v2,resnet50")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            if name == "demo":
                if not (args.demo_run / "model.keras").is_file():
                    print(f"   skipped: no demo run at {args.demo_run} (run `make demo` first)")
                    continue
                rows.append(measure("demo", args.demo_run, root, None))
            else:
                run_dir, _ = make_run_dir(get_base(name), 224, root / "runs")
                calibration = random_images(root / "calibration", 224)
                rows.append(measure(name, run_dir, root, calibration))
    print()
    print(f"{os.cpu_count()} CPU cores, tensorflow {tf.__version__}, onnxruntime {ort.__version__}")
    header = (
        f"{'model':14s} {'px':>4s} {'TF ms':>8s} {'ORT ms':>8s} {'ORT/TF':>7s} {'int8 ms':>8s} "
        f"{'fp32 img/s':>10s} {'int8 img/s':>10s} {'int8/fp32':>9s} {'int8 Δacc':>9s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        delta = "-" if r["int8_delta_points"] is None else f"{r['int8_delta_points']:+.2f}pt"
        print(
            f"{r['model']:14s} {r['size']:>4d} {r['tf_ms']:8.2f} {r['fp32_ms']:8.2f} "
            f"{r['ort_vs_tf']:6.1f}x {r['int8_ms']:8.2f} {r['fp32_ips']:10.1f} {r['int8_ips']:10.1f} "
            f"{r['int8_vs_fp32']:8.2f}x {delta:>9s}"
        )
    print("ORT/TF: TensorFlow latency / onnxruntime fp32 latency at batch 1 (goal >= 3).")
    print("int8/fp32: throughput ratio at batch 8 (goal >= 1.8 on ResNet50 with <= 1 point lost).")


if __name__ == "__main__":
    main()
