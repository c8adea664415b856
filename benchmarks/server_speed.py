"""Server vs in-process onnxruntime, MobileNetV2 at 224 px (the issue's goals), on this machine.

Side by side in one run:
- batch-1 latency: onnxruntime called in-process vs a gRPC call to `tlserve serve` (TF Serving API
  Predict, float32 tensor in tensor_content; and the native API with a JPEG), p50 over sequential calls;
- throughput: in-process best over batch sizes 1..32 vs the server under 16 concurrent clients
  (batch 1 each, grpc.aio in this process), images/s.
A bare Python gRPC server answering the same request with nothing (benchmarks/grpc_echo.py) gives
the transport's own cost, the floor under the first ratio.
Goals: server p50 / in-process p50 <= 1.10; server throughput at concurrency 16 / in-process best
>= 0.90. The clients share the 2 cores with the server, as any loopback benchmark does. Prints a
table; asserts nothing.

    python benchmarks/server_speed.py [--calls 200] [--seconds 10] [--workdir bench-output/server]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import grpc
import numpy as np
import onnxruntime as ort
from PIL import Image

from tlserve import repository as repo
from tlserve.service import messages
from tlserve.service.bench.calls import Payload, build_request, grpc_call, open_channel, probe
from tlserve.service.bench.echo import echo_floor_ms
from tlserve.service.bench.inprocess import batch_sweep
from tlserve.service.bench.load import Load, measure, p50_ms
from tlserve.service.client import channel
from tlserve.service.launch import ServerProcess

NAME = "mobilenet_v2_224"
SIZE = 224


def build_repository(workdir: Path) -> Path:
    """Export MobileNetV2 224 (random weights, calibrated BatchNorm) once; reused by later runs."""
    repository = workdir / "models"
    if repo.versions(repository / NAME):
        return repository
    import tempfile

    from tlserve.exporters.export import ExportOptions, export
    from tlserve.training.bases import get_base
    from tlserve.training.synthetic import make_run_dir

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, _ = make_run_dir(get_base("mobilenet_v2"), SIZE, Path(tmp))
        export(
            ExportOptions(run_dir=run_dir, repository=repository, name=NAME, formats=("savedmodel", "onnx"))
        )
    return repository


def in_process(model: Path, calls: int) -> tuple[float, float, int]:
    """(batch-1 p50 ms, best images/s, at which batch size)."""
    figures = batch_sweep(model, SIZE, SIZE, calls)
    return figures["p50"], figures["best_ips"], figures["best_batch"]


async def closed_loop(
    target: str, concurrency: int, seconds: float, api: str = "tfs"
) -> tuple[float, float, int, float, float]:
    """(images/s, p50 ms, errors, wall seconds, client CPU seconds) with ``concurrency`` clients each
    sending batch-1 requests through ``api`` ("tfs" Predict or "oip" ModelInfer)."""
    pixels = np.random.default_rng(1).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    request = build_request("tfs" if api == "tfs" else "v2", NAME, 0, Payload(pixels=pixels))
    async with open_channel(target) as to_server:
        for _ in range(concurrency):  # warm-up
            await probe(to_server, request, 1, 30)
        call = grpc_call(to_server, request, 30)
        run = await measure("server", call, Load(concurrency, None, 0.0, seconds, sys.maxsize), 1)
    summary = run.summary
    p50 = summary.latency_ms.get("p50", float("nan"))
    return summary.images_per_s, p50, summary.error_count, run.wall_s, run.cpu_s


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200, help="sequential calls per latency figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the concurrency-16 run")
    parser.add_argument("--workdir", type=Path, default=Path("bench-output/server"))
    args = parser.parse_args()
    repository = build_repository(args.workdir)
    model = repository / NAME / str(repo.versions(repository / NAME)[-1]) / repo.ONNX_FILES["fp32"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"onnxruntime {ort.__version__}, grpcio {grpc.__version__}")  # fmt: skip
    with ServerProcess(repository, "--max-batch-size", "32") as server:
        server.wait_ready(NAME)
        with server.client(timeout_s=30) as client:
            pixels = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
            buffer = io.BytesIO()
            Image.fromarray(pixels[0].astype(np.uint8)).save(buffer, "JPEG", quality=90)
            jpeg = buffer.getvalue()
            # interleave the figures so that drifting machine load hits both sides alike
            raw_ms, raw_best, raw_batch = in_process(model, args.calls)
            tensor_ms = p50_ms(lambda: client.predict(NAME, pixels), args.calls)
            with channel(server.target) as to_server:
                infer = to_server.unary_unary(messages.MODEL_INFER)
                oip_bytes = messages.infer_request(NAME, pixels).SerializeToString()
                oip_ms = p50_ms(lambda: infer(oip_bytes, timeout=30), args.calls)
            jpeg_ms = p50_ms(lambda: client.classify(NAME, [jpeg]), args.calls)
            raw_ms_again = in_process(model, args.calls)[0]
        floor_ms = echo_floor_ms(messages.predict_request(NAME, pixels).SerializeToString(), args.calls)
        server_cpu = server.cpu_seconds()
        served, served_p50, errors, wall, client_cpu = asyncio.run(
            closed_loop(server.target, 16, args.seconds)
        )
        server_cpu = server.cpu_seconds() - server_cpu
        oip = asyncio.run(closed_loop(server.target, 16, args.seconds, "oip"))
        code = server.stop()
    raw = min(raw_ms, raw_ms_again)
    print(f"\n{'figure':<58} {'value':>10}")
    print(f"{'in-process onnxruntime, batch 1, p50 (ms)':<58} {raw:>10.2f}")
    print(f"{'server, TF Serving Predict tensor, batch 1, p50 (ms)':<58} {tensor_ms:>10.2f}")
    print(f"{'server, OIP ModelInfer raw FP32, batch 1, p50 (ms)':<58} {oip_ms:>10.2f}")
    print(f"{'server, native Classify JPEG, batch 1, p50 (ms)':<58} {jpeg_ms:>10.2f}")
    print(f"{'  ratio server tensor / in-process (goal <= 1.10)':<58} {tensor_ms / raw:>10.2f}")
    print(f"{'bare Python gRPC echo of the same request, p50 (ms)':<58} {floor_ms:>10.2f}")
    print(f"{'  floor ratio (in-process + echo) / in-process':<58} {(raw + floor_ms) / raw:>10.2f}")
    print(f"{f'in-process best throughput (batch {raw_batch}), images/s':<58} {raw_best:>10.1f}")
    print(f"{'server, 16 concurrent clients, images/s':<58} {served:>10.1f}")
    print(f"{'  p50 latency at concurrency 16 (ms)':<58} {served_p50:>10.1f}")
    print(f"{'  ratio server / in-process best (goal >= 0.90)':<58} {served / raw_best:>10.2f}")
    print(f"{'  errors':<58} {errors:>10d}")
    cores = os.cpu_count() or 1
    print(f"{'  CPU used by the server, % of all cores':<58} {100 * server_cpu / (wall * cores):>10.0f}")
    client_share = 100 * client_cpu / (wall * cores)
    print(f"{'  CPU used by the 16 clients (this process), % of all cores':<58} {client_share:>10.0f}")
    print(f"{'server, OIP ModelInfer, 16 concurrent clients, images/s':<58} {oip[0]:>10.1f}")
    print(f"{'  p50 latency at concurrency 16 (ms); errors':<58} {oip[1]:>10.1f} {oip[2]:>3d}")
    print(f"server exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
