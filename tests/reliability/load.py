"""An asyncio load generator for the reliability suites: real gRPC calls through tlserve's own wire
code (no TensorFlow), closed loop (N clients, each calling again at once) or open loop (a fixed rate,
latency counted from the scheduled send time, so queueing is not hidden).

Every call is recorded: which request kind, when it was scheduled, how long it took, its status.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from grpc import aio
from PIL import Image

from tests.service.tiny import SIZE
from tlserve import repository as repo
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb2
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from tlserve.service.wire.tfs import serving_pb2, serving_pb2_grpc
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb
from tlserve.service.wire.tlserve.v1 import inference_pb2, inference_pb2_grpc

RED = (200, 40, 40)


@dataclass(frozen=True)
class Call:
    kind: str
    scheduled: float
    """time.monotonic() when the call was due (open loop) or sent (closed loop)."""
    seconds: float
    code: str
    version: int = 0
    """The model version that answered (0 when the call failed)."""


@dataclass
class Result:
    calls: list[Call] = field(default_factory=list)

    def codes(self, since: float = 0.0) -> Counter[str]:
        return Counter(c.code for c in self.calls if c.scheduled >= since)

    def latencies_ms(self, code: str = "OK", since: float = 0.0) -> np.ndarray:
        return np.array([c.seconds * 1000 for c in self.calls if c.code == code and c.scheduled >= since])

    def summary(self, since: float = 0.0) -> dict[str, Any]:
        """Counts by status and p50/p99/max latency (ms) of each status seen, after ``since``."""
        out: dict[str, Any] = {"calls": sum(1 for c in self.calls if c.scheduled >= since)}
        out["codes"] = dict(sorted(self.codes(since).items()))
        for code in out["codes"]:
            ms = self.latencies_ms(code, since)
            out[code] = {"p50_ms": round(float(np.percentile(ms, 50)), 2),
                         "p99_ms": round(float(np.percentile(ms, 99)), 2),
                         "max_ms": round(float(ms.max()), 2)}  # fmt: skip
        return out


def png(color: tuple[int, int, int] = RED, size: int = SIZE + 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(color: tuple[int, int, int] = RED, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class Caller:
    """One channel, the three APIs; ``kinds`` maps a request kind to a coroutine making that call."""

    def __init__(self, target: str, model: str, token: str | None = None) -> None:
        self.channel = aio.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.native = inference_pb2_grpc.InferenceStub(self.channel)
        self.tfs = serving_pb2_grpc.PredictionServiceStub(self.channel)
        self.oip = oip_grpc.GRPCInferenceServiceStub(self.channel)
        pixels = np.broadcast_to(np.asarray(RED, np.float32), (1, SIZE, SIZE, 3))
        self.classify_png = inference_pb2.ClassifyRequest(model=model, images=[png()], top_k=1)
        self.classify_jpeg = inference_pb2.ClassifyRequest(model=model, images=[jpeg()], top_k=1)
        self.predict = serving_pb2.PredictRequest()
        self.predict.model_spec.name = model
        tensor = self.predict.inputs[repo.INPUT_NAME]
        tensor.dtype = tf_pb.DT_FLOAT
        tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in pixels.shape)
        tensor.tensor_content = np.ascontiguousarray(pixels).tobytes()
        self.infer = oip_pb2.ModelInferRequest(model_name=model)
        entry = self.infer.inputs.add(name=repo.INPUT_NAME, datatype="FP32", shape=list(pixels.shape))
        del entry  # the raw bytes ride in raw_input_contents
        self.infer.raw_input_contents.append(np.ascontiguousarray(pixels).tobytes())
        md = self.metadata
        self.kinds: dict[str, Callable[[float], Any]] = {
            "native-png": lambda t: self.native.Classify(self.classify_png, timeout=t, metadata=md),
            "native-jpeg": lambda t: self.native.Classify(self.classify_jpeg, timeout=t, metadata=md),
            "tfs-tensor": lambda t: self.tfs.Predict(self.predict, timeout=t, metadata=md),
            "oip-tensor": lambda t: self.oip.ModelInfer(self.infer, timeout=t, metadata=md),
        }

    async def call(self, kind: str, result: Result, timeout_s: float, scheduled: float | None = None) -> str:
        start = time.monotonic() if scheduled is None else scheduled
        version = 0
        try:
            response = await self.kinds[kind](timeout_s)
            code = "OK"
            version = _version(response)
        except grpc.RpcError as exc:  # aio raises AioRpcError, a grpc.RpcError
            code = exc.code().name  # type: ignore[attr-defined]
        result.calls.append(Call(kind, start, time.monotonic() - start, code, version))
        return code

    async def close(self) -> None:
        await self.channel.close()


def _version(response: Any) -> int:
    if isinstance(response, serving_pb2.PredictResponse):
        return int(response.model_spec.version.value)
    if isinstance(response, oip_pb2.ModelInferResponse):
        return int(response.model_version or 0)
    return int(response.version)


async def closed_loop(
    target: str,
    model: str,
    clients: int,
    seconds: float,
    kinds: list[str],
    token: str | None = None,
    timeout_s: float = 10.0,
    result: Result | None = None,
    stop: asyncio.Event | None = None,
) -> Result:
    """``clients`` concurrent callers, each cycling through ``kinds`` without pause, for ``seconds``
    (or until ``stop`` is set). One channel per client, as separate processes would have."""
    result = result if result is not None else Result()
    stop = stop or asyncio.Event()
    end = time.monotonic() + seconds

    async def client(index: int) -> None:
        caller = Caller(target, model, token)
        try:
            i = index
            while time.monotonic() < end and not stop.is_set():
                if await caller.call(kinds[i % len(kinds)], result, timeout_s) == "UNAVAILABLE":
                    await asyncio.sleep(0.01)  # as a real client backs off before retrying
                i += 1
        finally:
            await caller.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return result


async def open_loop(
    target: str, model: str, rate: float, seconds: float, kind: str, token: str | None = None,
    timeout_s: float = 10.0, channels: int = 4,
) -> Result:  # fmt: skip
    """``rate`` calls per second on a fixed schedule for ``seconds``, whatever the answers."""
    result = Result()
    callers = [Caller(target, model, token) for _ in range(channels)]
    start = time.monotonic()
    tasks = []
    for n in range(int(rate * seconds)):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(callers[n % channels].call(kind, result, timeout_s, scheduled=due)))
    await asyncio.gather(*tasks)
    for caller in callers:
        await caller.close()
    return result
