"""Two versions of the server side by side: the working tree's and a git commit's, on one model.

For a change that must not slow the server down (a refactor): both servers run at once on the same
exported model, and the same load generator (the working tree's ``tlserve bench``) drives them in
turn, A B A B ..., for each API, so that the machine's drift (20-40 % within minutes on shared
machines) falls on both alike. Prints throughput and p50 of each round and the ratios new/old.

    python benchmarks/ab_servers.py --before 166175a [--rounds 3] [--seconds 5] [--size 96]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tlserve.service.launch import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
LOADS = [  # (label, tlserve bench arguments)
    ("TF Serving Predict, tensor", ["--api", "tfs", "--input", "tensor"]),
    ("OIP ModelInfer, tensor", ["--api", "v2", "--input", "tensor"]),  # NOTE: load[1] is the API
    ("native Classify, JPEG", ["--api", "native", "--input", "jpeg"]),
]


def export_model(workdir: Path, size: int) -> Path:
    """MobileNetV2 with random weights at ``size`` px, exported as ONNX (a small input makes the
    server's own work per request a larger share, so a change to it shows)."""
    from tlserve.exporters.export import ExportOptions, export
    from tlserve.training.bases import get_base
    from tlserve.training.synthetic import make_run_dir

    repository = workdir / "models"
    run_dir, _ = make_run_dir(get_base("mobilenet_v2"), size, workdir / "runs")
    export(ExportOptions(run_dir=run_dir, repository=repository, name="m", formats=("onnx",)))
    return repository


def describe(server: ServerProcess) -> str:
    """What the server says of the model over OIP HTTP (its code shows: the data plane lists both inputs)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/models/m", timeout=10) as answer:
        inputs = [f"{t['name']} {t['datatype']}" for t in json.loads(answer.read())["inputs"]]
    return f"pid {server.pid}, ModelMetadata inputs: {', '.join(inputs)}"


def bench(
    server: ServerProcess, load: list[str], seconds: float, concurrency: int, out: Path, model: str = "m"
) -> dict:
    """One closed-loop `tlserve bench` run against ``model``: requests/s, images/s and p50 (ms)."""
    command = [sys.executable, "-m", "tlserve", "bench", "--server", server.target, "--model", model, *load,
               "--concurrency", str(concurrency), "--duration", str(seconds), "--warmup", "1",
               "--json", str(out)]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    figures = json.loads(out.read_text())["server"]
    if figures["errors"]:
        raise SystemExit(f"{server.target} {model}: {figures['errors_by_code']}")
    return {
        "rps": figures["requests_per_s"],
        "ips": figures["images_per_s"],
        "p50_ms": figures["latency_ms"]["p50"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="git commit (or any ref) of the old server")
    parser.add_argument("--after", help="git commit of the new server (default: the working tree)")
    parser.add_argument("--loads", default="tfs,v2,native", help="which of tfs, v2, native to run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--size", type=int, default=96, help="the model's input size in px")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tlserve-ab-") as tmp:
        workdir = Path(tmp)
        trees = {"old": workdir / "before", "new": workdir / "after" if args.after else ROOT}
        for name, ref in (("old", args.before), ("new", args.after)):
            if ref:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(trees[name]), ref],
                               check=True, capture_output=True)  # fmt: skip
        try:
            repository = export_model(workdir, args.size)
            # NOTE: the servers' import path: the current directory comes first (python -m), then
            # PYTHONPATH, then the editable install of the working tree
            os.chdir(workdir)
            servers = {
                name: ServerProcess(repository, env={"PYTHONPATH": str(tree)}) for name, tree in trees.items()
            }
            try:
                for name, server in servers.items():
                    server.wait_ready("m")
                    print(f"{name}: {describe(server)}", flush=True)
                run(servers, args, workdir)
            finally:
                for server in servers.values():
                    server.stop()
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
                    )


def run(servers: dict[str, ServerProcess], args: argparse.Namespace, workdir: Path) -> None:
    print(f"old = {args.before}, new = {args.after or 'the working tree'}; MobileNetV2 {args.size} px "
          f"ONNX, closed loop {args.concurrency} clients, {args.seconds:g} s per run, {args.rounds} "
          "rounds, order alternating")  # fmt: skip
    print(f"{'load':<28} {'round':>5} {'old req/s':>10} {'new req/s':>10} {'old p50':>8} {'new p50':>8}")
    ratios: dict[str, list[float]] = {}
    wanted = args.loads.split(",")
    for label, load in [(label, load) for label, load in LOADS if load[1] in wanted]:
        for round_ in range(args.rounds):
            order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
            got = {
                k: bench(servers[k], load, args.seconds, args.concurrency, workdir / f"{k}.json")
                for k in order
            }
            print(f"{label:<28} {round_ + 1:>5} {got['old']['rps']:>10.1f} {got['new']['rps']:>10.1f} "
                  f"{got['old']['p50_ms']:>8.2f} {got['new']['p50_ms']:>8.2f}")  # fmt: skip
            ratios.setdefault(f"{label}: throughput new/old", []).append(
                got["new"]["rps"] / got["old"]["rps"]
            )
            ratios.setdefault(f"{label}: p50 new/old", []).append(got["new"]["p50_ms"] / got["old"]["p50_ms"])
    print("\nratios (median of the rounds; 1.00 = the same; each round's in brackets)")
    for name, values in ratios.items():
        print(f"  {name:<50} {statistics.median(values):.3f}  [{', '.join(f'{v:.2f}' for v in values)}]")


if __name__ == "__main__":
    main()
