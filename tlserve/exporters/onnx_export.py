"""SavedModel -> ONNX (fp32 via tf2onnx, fp16 via onnxconverter-common), and running ONNX on CPU.

tf2onnx runs as its own process on the SavedModel's ``serving_default`` signature: the path that
converts every base (NOTES.md: ``from_keras``/``from_function`` add inputs on some bases).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tlserve import repository as repo
from tlserve.errors import ExportError, UsageError
from tlserve.exporters.options import check_batch
from tlserve.tfnoise import drop_tf_lines

OPSETS = range(13, 19)
BATCH_DIM = "batch"


def convert_fp32(
    saved_model: Path, out: Path, opset: int, outputs: tuple[str, ...] = (repo.OUTPUT_NAME,)
) -> None:
    """Convert (weights lifted out of tf2onnx, else tf2onnx's own path: onnx_lifted.py), then check
    the graph has exactly the one image input and the named ``outputs``, put in that order."""
    lifted = [sys.executable, "-m", "tlserve.exporters.onnx_lifted", str(saved_model), str(out), str(opset)]
    result = _convert(lifted, saved_model)
    if result.returncode != 0:
        # NOTE: not liftable (exit 3), or the lifted path failed on something tf2onnx's own may convert
        out.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "tf2onnx.convert",
            "--saved-model", str(saved_model),
            "--signature_def", repo.SIGNATURE_PIXELS,  # NOTE: without it tf2onnx takes the first one
            "--tag", "serve",
            "--opset", str(opset),
            "--output", str(out),
        ]  # fmt: skip
        result = _convert(command, saved_model)
    if result.returncode != 0:
        tail = "\n".join(drop_tf_lines(result.stderr).strip().splitlines()[-15:])
        raise ExportError(f"tf2onnx failed (exit {result.returncode}); its last lines:\n{tail}")
    model = onnx.load(str(out))
    inputs = [i.name for i in model.graph.input]
    got = {o.name: o for o in model.graph.output}
    if inputs != [repo.INPUT_NAME] or sorted(got) != sorted(outputs):
        raise ExportError(
            f"unexpected ONNX signature: inputs {inputs}, outputs {list(got)}; "
            f"expected [{repo.INPUT_NAME!r}] -> {list(outputs)}"
        )
    ordered = [got[name] for name in outputs]  # NOTE: tf2onnx's own path sorts them by name
    del model.graph.output[:]
    model.graph.output.extend(ordered)
    # a readable name for the dynamic batch dimension instead of tf2onnx's "unk__N"
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _convert(command: list[str], saved_model: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode == -signal.SIGKILL:
        # NOTE: the kernel's OOM killer. tf2onnx's own path took over twenty times the SavedModel's
        # size (ConvNeXtLarge's 757 MB was killed at 18.4 GB); the lifted one about four times.
        size = sum(p.stat().st_size for p in saved_model.rglob("*") if p.is_file()) / 2**20
        raise ExportError(
            f"tf2onnx was killed (SIGKILL), most likely out of memory: converting this {size:.0f} MB "
            "SavedModel; free memory, or export --formats savedmodel"
        )
    return result


def convert_fp16(fp32: Path, out: Path) -> None:
    """Weights and compute in float16, float32 inputs and outputs kept (for CUDA/TensorRT)."""
    from onnxconverter_common import float16

    model = onnx.load(str(fp32))
    _outputs_apart(model)
    with warnings.catch_warnings():
        # NOTE: it warns for every tiny constant it clamps to fp16's range; parity is measured instead.
        warnings.filterwarnings("ignore", message=".*will be truncated to.*")
        model = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(out))


def _outputs_apart(model: onnx.ModelProto) -> None:
    """Give each graph output that other nodes also read (``embedding`` feeds the head) an Identity
    of its own. NOTE: with keep_io_types, onnxconverter-common casts such an output back to float32
    for its readers too, and onnxruntime then refuses the model (MatMul bound to float and float16)."""
    graph = model.graph
    consumed = {name for node in graph.node for name in node.input}
    for output in graph.output:
        if output.name not in consumed:
            continue
        inner = f"{output.name}__inner"
        for node in graph.node:
            node.input[:] = [inner if i == output.name else i for i in node.input]
            node.output[:] = [inner if o == output.name else o for o in node.output]
        graph.node.append(
            onnx.helper.make_node("Identity", [inner], [output.name], name=f"{output.name}__apart")
        )


def check_opset(opset: int) -> int:
    if opset not in OPSETS:
        raise UsageError(
            f"--opset {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1} (default 17)"
        )
    return opset


def cpu_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=[repo.CPU])


def run(session: ort.InferenceSession, pixels: np.ndarray, output: str = repo.OUTPUT_NAME) -> np.ndarray:
    batch_size = check_batch(pixels.shape[1])
    outputs = [
        session.run([output], {repo.INPUT_NAME: pixels[i : i + batch_size]})[0]
        for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def latency_ms(predict: Callable[[np.ndarray], object], pixels: np.ndarray, repeats: int = 30) -> float:
    """Median wall time of ``predict(one image)``, in ms, after three warm-up calls."""
    return paired_latency_ms(predict, predict, pixels, repeats)[0]


def paired_latency_ms(
    a: Callable[[np.ndarray], object], b: Callable[[np.ndarray], object], pixels: np.ndarray, repeats: int
) -> tuple[float, float]:
    """Median batch-1 latencies of ``a`` and ``b`` in ms, timed in alternation after warm-up."""
    one = pixels[:1]
    for _ in range(3):
        a(one)
        b(one)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for predict, bucket in ((a, times[0]), (b, times[1])):
            started = time.perf_counter()
            predict(one)
            bucket.append(time.perf_counter() - started)
    return float(np.median(times[0]) * 1000), float(np.median(times[1]) * 1000)
