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
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import grpc
import numpy as np
import onnxruntime as ort
from PIL import Image

from tlserve import repository as repo
from tlserve.service.launch import ServerProcess
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb2
from tlserve.service.wire.tfs import serving_pb2
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb

NAME = "mobilenet_v2_224"
SIZE = 224


def build_repository(workdir: Path) -> Path:
    """Export MobileNetV2 224 (random weights, calibrated BatchNorm) once; reused by later runs."""
    repository = workdir / "models"
    if repo.versions(repository / NAME):
        return repository
    import tempfile

    from export_matrix import make_run_dir

    from tlserve.exporters.export import ExportOptions, export
    from tlserve.training.bases import get_base

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, _ = make_run_dir(get_base("mobilenet_v2"), SIZE, Path(tmp))
        export(
            ExportOptions(run_dir=run_dir, repository=repository, name=NAME, formats=("savedmodel", "onnx"))
        )
    return repository


def p50_ms(call: Callable[[], object], calls: int) -> float:
    """Median milliseconds of ``calls`` calls, after 10 unmeasured ones."""
    for _ in range(10):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def in_process(model: Path, calls: int) -> tuple[float, float, int]:
    """(batch-1 p50 ms, best images/s, at which batch size)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    latency = p50_ms(lambda: session.run(None, {"image": one}), calls)
    best, best_batch = 0.0, 1
    for batch in (1, 2, 4, 8, 16, 32):
        pixels = rng.uniform(0, 255, (batch, SIZE, SIZE, 3)).astype(np.float32)
        ms = p50_ms(lambda: session.run(None, {"image": pixels}), max(10, calls // batch))  # noqa: B023
        if batch * 1000 / ms > best:
            best, best_batch = batch * 1000 / ms, batch
    return latency, best, best_batch


def predict_request(pixels: np.ndarray) -> serving_pb2.PredictRequest:
    request = serving_pb2.PredictRequest()
    request.model_spec.name = NAME
    tensor = request.inputs[repo.INPUT_NAME]
    tensor.dtype = tf_pb.DT_FLOAT
    tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in pixels.shape)
    tensor.tensor_content = pixels.tobytes()
    return request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def oip_request(pixels: np.ndarray) -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name=NAME)
    request.inputs.add(name=repo.INPUT_NAME, datatype="FP32", shape=list(pixels.shape))
    request.raw_input_contents.append(pixels.tobytes())
    return request


TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"
OIP_INFER = "/inference.GRPCInferenceService/ModelInfer"


async def closed_loop(
    target: str, concurrency: int, seconds: float, api: str = "tfs"
) -> tuple[float, float, int, float, float]:
    """(images/s, p50 ms, errors, wall seconds, client CPU seconds) with ``concurrency`` clients each
    sending batch-1 requests through ``api`` ("tfs" Predict or "oip" ModelInfer)."""
    pixels = np.random.default_rng(1).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    # NOTE: serialized once, as perf_analyzer prepares its inputs: the clients share the 2 cores with
    # the server, so the less CPU they burn the more the figure says about the server.
    message = predict_request(pixels) if api == "tfs" else oip_request(pixels)
    request = message.SerializeToString()
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        predict = channel.unary_unary(TFS_PREDICT if api == "tfs" else OIP_INFER)
        for _ in range(concurrency):  # warm-up
            await predict(request, timeout=30)
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    await predict(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return len(latencies) / elapsed, float(np.median(latencies) * 1000), errors, elapsed, cpu


def echo_floor_ms(payload: bytes, calls: int) -> float:
    """p50 of a call carrying ``payload`` to a bare Python gRPC server that does nothing."""
    import subprocess

    echo = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "grpc_echo.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            call = channel.unary_unary("/bench.Echo/Echo")
            return p50_ms(lambda: call(payload, timeout=30), calls)
    finally:
        echo.terminate()
        echo.wait()


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
        with server.client(timeout_s=30) as client:
            client.wait_ready(NAME)
            pixels = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
            buffer = io.BytesIO()
            Image.fromarray(pixels[0].astype(np.uint8)).save(buffer, "JPEG", quality=90)
            jpeg = buffer.getvalue()
            # interleave the figures so that drifting machine load hits both sides alike
            raw_ms, raw_best, raw_batch = in_process(model, args.calls)
            tensor_ms = p50_ms(lambda: client.predict(NAME, pixels), args.calls)
            with grpc.insecure_channel(server.target) as channel:
                infer = channel.unary_unary(OIP_INFER)
                oip_bytes = oip_request(pixels).SerializeToString()
                oip_ms = p50_ms(lambda: infer(oip_bytes, timeout=30), args.calls)
            jpeg_ms = p50_ms(lambda: client.classify(NAME, [jpeg]), args.calls)
            raw_ms_again = in_process(model, args.calls)[0]
        floor_ms = echo_floor_ms(predict_request(pixels).SerializeToString(), args.calls)
        server_cpu = cpu_seconds(server.proc.pid)
        served, served_p50, errors, wall, client_cpu = asyncio.run(
            closed_loop(server.target, 16, args.seconds)
        )
        server_cpu = cpu_seconds(server.proc.pid) - server_cpu
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
