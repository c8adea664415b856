"""The reliability suites' load: their requests on the tiny model, sent by ``tlserve bench``'s load
generator (tlserve.service.bench), closed loop (N clients, each calling again at once) or open loop
(a fixed rate, latency counted from the scheduled send time, so queueing is not hidden).

Every call is recorded (bench.stats.Records): when it was due, when it was answered, its status,
the version that answered and which request kind it was.
"""

from __future__ import annotations

import asyncio
import io
import sys

import grpc
import numpy as np
from PIL import Image

from tests.service.tiny import SIZE
from tlserve.service.bench import calls
from tlserve.service.bench.calls import Payload, Request, build_request, cycle, open_channels
from tlserve.service.bench.load import Call, Load, Runner
from tlserve.service.bench.stats import Records

RED = (200, 40, 40)
UNAVAILABLE_PAUSE_S = 0.01
"""A closed-loop client's pause after UNAVAILABLE, as a real client backs off before retrying."""


def png(color: tuple[int, int, int] = RED, size: int = SIZE + 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(color: tuple[int, int, int] = RED, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def requests(model: str) -> dict[str, Request]:
    """Each request kind the suites mix: native Classify of a PNG and a JPEG, TF Serving Predict and
    OIP ModelInfer of a red tensor."""
    pixels = Payload(pixels=np.full((1, SIZE, SIZE, 3), RED, np.float32))
    return {
        "native-png": build_request("native", model, 0, Payload(images=[png()])),
        "native-jpeg": build_request("native", model, 0, Payload(images=[jpeg()])),
        "tfs-tensor": build_request("tfs", model, 0, pixels),
        "oip-tensor": build_request("v2", model, 0, pixels),
    }


def _call(channel: grpc.aio.Channel, request: Request, kind: str, token: str | None, timeout: float) -> Call:
    """The call of one kind, reading the version of every answer."""
    return calls.grpc_call(channel, request, timeout, calls.bearer(token), kind, read_version=True)


async def closed_loop(
    target: str,
    model: str,
    clients: int,
    seconds: float,
    kinds: list[str],
    token: str | None = None,
    timeout_s: float = 10.0,
    stop: asyncio.Event | None = None,
) -> Records:
    """``clients`` concurrent callers, each cycling through ``kinds`` without pause, for ``seconds``
    (or until ``stop`` is set). One channel per client, as separate processes would have."""
    built = requests(model)
    load = Load(clients, None, 0.0, seconds, sys.maxsize, unavailable_pause_s=UNAVAILABLE_PAUSE_S)
    async with open_channels(target, clients) as channels:
        mixed = [cycle([_call(channel, built[k], k, token, timeout_s) for k in kinds], i)
                 for i, channel in enumerate(channels)]  # fmt: skip
        return await Runner(mixed, load, until=stop).run()


async def open_loop(
    target: str, model: str, rate: float, seconds: float, kind: str, token: str | None = None,
    timeout_s: float = 10.0, channels: int = 4,
) -> Records:  # fmt: skip
    """``rate`` calls per second on a fixed schedule for ``seconds``, whatever the answers; the calls
    spread over ``channels`` channels in turn."""
    request = requests(model)[kind]
    async with open_channels(target, channels) as opened:
        spread = [_call(channel, request, kind, token, timeout_s) for channel in opened]
        return await Runner(spread, Load(None, rate, 0.0, seconds, sys.maxsize)).run()
