"""The request of each API and input kind, built and serialized once (messages.py); the channel and
the call that send it; the first answer's check.

tensor input: random float32 pixels; jpeg: encoded images (the native API takes only these).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import numpy as np
from PIL import Image

from tlserve import repository as repo
from tlserve.errors import TlserveError, UsageError
from tlserve.service import messages
from tlserve.service.bench.load import Call
from tlserve.service.bench.stats import OK, Outcome
from tlserve.service.client import MAX_MESSAGE_BYTES, Tls

APIS = ("native", "tfs", "v2")
INPUTS = ("tensor", "uint8", "jpeg")
PIXELS = ("tensor", "uint8")
"""The inputs that send pixels (float32, uint8) rather than encoded images."""
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]  # fmt: skip


@dataclass(frozen=True)
class Payload:
    """One request's images: pixels [B, H, W, 3] (float32 for tensor input, uint8 for uint8) or B
    encoded images (jpeg)."""

    pixels: np.ndarray | None = None
    images: list[bytes] | None = None


def generated_jpeg(height: int, width: int) -> bytes:
    """A colour gradient with a little noise at quality 90: sized like a photo of that size, not like
    pure noise (which JPEG cannot compress and which decodes slower than any photo)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 0 * x], axis=-1)
    rgb += np.random.default_rng(0).normal(0, 8, rgb.shape)
    buffer = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_payload(kind: str, batch: int, height: int, width: int, image: bytes | None = None) -> Payload:
    if kind in PIXELS:
        pixels = np.random.default_rng(0).uniform(0, 255, (batch, height, width, 3))
        return Payload(pixels=pixels.astype(np.float32) if kind == "tensor" else pixels.astype(np.uint8))
    return Payload(images=[image if image is not None else generated_jpeg(height, width)] * batch)


@dataclass(frozen=True)
class Request:
    method: str
    """The gRPC method path, e.g. /tlserve.v1.Inference/Classify."""
    body: bytes
    """The serialized request message."""
    answer: Callable[[bytes], tuple[int, int]]
    """A serialized answer -> (the version that answered, rows); raises if it does not parse."""


def build_request(api: str, model: str, version: int, payload: Payload) -> Request:
    """The request of ``api`` carrying ``payload`` (native Classify: top_k 1); ``version`` 0 asks
    for the newest serving."""
    if api == "native":
        assert payload.images is not None
        message = messages.classify_request(model, payload.images, version, top_k=1)
        return Request(messages.CLASSIFY, message.SerializeToString(), messages.classify_answer)
    if api == "tfs":
        tfs = messages.predict_request(model, payload.pixels, payload.images, version, (repo.OUTPUT_NAME,))
        return Request(messages.PREDICT, tfs.SerializeToString(), messages.predict_answer)
    assert api == "v2", api
    v2 = messages.infer_request(model, payload.pixels, payload.images, version, (repo.OUTPUT_NAME,))
    return Request(messages.MODEL_INFER, v2.SerializeToString(), messages.infer_answer)


def bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The call metadata carrying ``token`` (None: no metadata)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def open_channel(target: str, tls: Tls | None = None) -> grpc.aio.Channel:
    """An asyncio channel with tlserve's message limits; TLS (and mutual TLS) when ``tls`` is given."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS + extra)


@asynccontextmanager
async def open_channels(
    target: str, count: int, tls: Tls | None = None
) -> AsyncIterator[list[grpc.aio.Channel]]:
    """``count`` channels, as that many client processes would have; closed on the way out."""
    channels = [open_channel(target, tls) for _ in range(count)]
    try:
        yield channels
    finally:
        for channel in channels:
            await channel.close()


def grpc_call(
    channel: grpc.aio.Channel,
    request: Request,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] | None = None,
    kind: str = "",
    read_version: bool = False,
) -> Call:
    """Sends ``request`` as it is; its Outcome says "OK" or the status code's name, and ``kind``.
    ``read_version``: parse each answer for the version that answered (costs client CPU)."""
    # NOTE: a bare multicallable sends the bytes serialized once, above, and does not parse the answer
    # unless asked: the load generator shares the machine's cores with a loopback server, so the less
    # CPU it spends per call the more the figures say about the server (perf_analyzer prepares its
    # inputs too).
    send = channel.unary_unary(request.method)
    ok = Outcome(OK, 0, kind)

    async def call() -> Outcome:
        try:
            data = await send(request.body, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return Outcome(str(exc.code().name), 0, kind)
        return Outcome(OK, request.answer(data)[0], kind) if read_version else ok

    return call


def cycle(calls: Sequence[Call], start: int = 0) -> Call:
    """A call making each of ``calls`` in turn, from call ``start`` (a client mixing requests)."""
    turns = itertools.count(start)

    async def call() -> Outcome:
        return await calls[next(turns) % len(calls)]()

    return call


async def probe(
    channel: grpc.aio.Channel,
    request: Request,
    batch: int,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> int:
    """Send ``request`` once and check the answer: its ``batch`` rows; the version that answered."""
    try:
        data = await channel.unary_unary(request.method)(request.body, timeout=timeout_s, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        message = f"the first request failed: {exc.code().name}: {exc.details()}"
        if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            raise UsageError(message) from None  # what was asked for does not fit this server's model
        raise TlserveError(message) from None
    version, rows = request.answer(data)
    if rows != batch:
        raise TlserveError(f"the first request's answer has {rows} rows for a batch of {batch}")
    return version
