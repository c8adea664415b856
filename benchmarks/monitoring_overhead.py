"""What prediction monitoring and hard-example capture cost per request, side by side in one server.

One `tlserve serve` process serves the same exported network under three names:

- ``plain``: the version without its reference statistics (as a version exported before them): no
  novelty, no drift, the class counts and confidence only;
- ``monitored``: with them: novelty and class drift on every request (the default for new exports);
- ``captured``: the same, and capture on (``capture_sample`` 0.05 into a temporary folder: one image
  in twenty written by the writer thread, a realistic rate; ``--capture-sample`` changes it).

`tlserve bench` drives each in turn, round after round (the order rotating), on TF Serving Predict
with a tensor and native Classify with a JPEG, at 1 and 16 clients, so that the machine's drift falls
on all three alike; the ratios to ``plain`` are the medians of each round's ratio. Nothing asserts.

    python benchmarks/monitoring_overhead.py [--rounds 3] [--seconds 4] [--size 96]

``benchmarks/performance.py`` (`make bench`) runs it as one of its sections.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import ab_servers
import numpy as np
from PIL import Image

from tlserve import repository as repo
from tlserve.service.launch import ServerProcess

VARIANTS = ("plain", "monitored", "captured")
LOADS = (("TF Serving Predict, tensor", ["--api", "tfs", "--input", "tensor"]),
         ("native Classify, JPEG", ["--api", "native", "--input", "jpeg"]))  # fmt: skip
CLIENTS = (1, 16)
Figures = dict[str, Any]


def export_model(workdir: Path, size: int) -> Path:
    """MobileNetV2 (random weights, calibrated BatchNorm) at ``size`` px, exported as ONNX with
    reference statistics from a folder of random images, served as ``monitored`` and ``captured``;
    ``plain`` is the same version with its reference statistics taken out."""
    from tlserve.exporters.export import ExportOptions, export
    from tlserve.training.bases import get_base
    from tlserve.training.synthetic import make_run_dir

    run_dir, _ = make_run_dir(get_base("mobilenet_v2"), size, workdir / "runs")
    labels = (run_dir / "labels.txt").read_text().split()
    rng = np.random.default_rng(0)
    data, val_files = workdir / "data", []
    for label in labels:
        (data / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                data / label / f"{i}.png"
            )
        val_files += [f"{label}/{i}.png" for i in range(9, 12)]
    run = json.loads((run_dir / "run.json").read_text())
    run["dataset"] = {"data_dir": str(data), "val_files": val_files}
    (run_dir / "run.json").write_text(json.dumps(run))
    repository = workdir / "models"
    result = export(
        ExportOptions(run_dir=run_dir, repository=repository, name="monitored", formats=("onnx",))
    )
    assert isinstance(result.path, Path) and result.manifest.reference.get("file"), "no reference statistics"
    shutil.copytree(result.path, repository / "captured" / "1")
    plain = repository / "plain" / "1"
    shutil.copytree(result.path, plain)
    manifest = json.loads((plain / repo.MANIFEST_FILE).read_text())
    manifest["reference"] = {}
    (plain / repo.MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    (plain / repo.REFERENCE_FILE).unlink()
    return repository


def bench(
    server: ServerProcess, model: str, load: list[str], clients: int, seconds: float, out: Path
) -> Figures:
    figures = ab_servers.bench(server, load, seconds, clients, out, model)
    return {"ips": figures["ips"], "p50": figures["p50_ms"]}


def measure(
    workdir: Path, rounds: int = 3, seconds: float = 4.0, size: int = 96, sample: float = 0.05
) -> Figures:
    """Per load and client count: each variant's median images/s and p50, and the medians of the
    per-round ratios to ``plain``; plus what capture wrote."""
    repository = export_model(workdir, size)
    captured = workdir / "captured"
    config = workdir / "tlserve.json"
    config.write_text(json.dumps({"models": {"captured": {"capture_sample": sample}}}))
    rows: list[Figures] = []
    with ServerProcess(repository, "--config", str(config), "--capture-dir", str(captured)) as server:
        for model in VARIANTS:
            server.wait_ready(model, timeout_s=300)
        for label, load in LOADS:
            for clients in CLIENTS:
                runs: dict[str, list[Figures]] = {v: [] for v in VARIANTS}
                for round_ in range(rounds):
                    order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
                    for model in order:
                        runs[model].append(
                            bench(server, model, load, clients, seconds, workdir / "bench.json")
                        )
                row: Figures = {"load": label, "clients": clients}
                for model in VARIANTS:
                    row[model] = {k: statistics.median(r[k] for r in runs[model]) for k in ("ips", "p50")}
                    pairs = list(zip(runs[model], runs["plain"], strict=True))
                    row[f"{model}_ratio"] = {
                        k: statistics.median(new[k] / old[k] for new, old in pairs) for k in ("ips", "p50")
                    }
                rows.append(row)
                print(format_row(row), flush=True)
    lines = (captured / "captured" / "captures.jsonl").read_text().splitlines() if captured.exists() else []
    return {
        "size": size,
        "sample": sample,
        "rounds": rounds,
        "seconds": seconds,
        "rows": rows,
        "captured": len(lines),
    }


def format_row(row: Figures) -> str:
    cells = [f"{row['load']}, {row['clients']} client(s):"]
    for model in VARIANTS:
        ratio = row[f"{model}_ratio"]
        cells.append(f"{model} {row[model]['ips']:.0f} img/s p50 {row[model]['p50']:.2f} ms "
                     f"(x{ratio['ips']:.3f} img/s, x{ratio['p50']:.3f} p50)")  # fmt: skip
    return "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--size", type=int, default=96, help="the model's input size in px (small: the "
                        "server's own work is a larger share)")  # fmt: skip
    parser.add_argument("--capture-sample", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tlserve-monitoring-") as tmp:
        figures = measure(Path(tmp), args.rounds, args.seconds, args.size, args.capture_sample)
    print(f"captured {figures['captured']} images at capture_sample {args.capture_sample}")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
