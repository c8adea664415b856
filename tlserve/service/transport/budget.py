"""One budget for the bytes of requests the server holds, gRPC and REST together, and reading a gRPC
request message under it.

Why: gRPC core buffers a message the server is reading up to ``max_message_bytes``, and a client can
open many calls that each send most of a message and never finish. Every call therefore reserves the
most it could hold before its message is read, and keeps what it really holds until it is answered;
a call that finds no room waits, unread (HTTP/2 flow control holds it to ``stream_window_bytes``),
first come first served. gRPC's own ResourceQuota, which would bound this inside gRPC core, is not
reachable from grpcio's Python API (``grpc.resource_quota`` is a pointer argument).

grpc.aio receives a unary method's request before the handler runs, so ``reading`` serves a unary
method as a stream-request one: the handler runs when the call's headers arrive (a call refused on
its metadata is answered without its message ever being read), then reads the message itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeAlias

import grpc
from grpc import aio

from tlserve.service.errors import DeadlineExceeded, ResourceExhausted, ServiceError

Context: TypeAlias = aio.ServicerContext[Any, Any]


class RequestBudget:
    """Bytes that calls may hold at once (``limit``); ``hold()`` gives each call its share."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Hold]:
        """A call's share, empty at first, given back when the call is done."""
        share = Hold(self)
        try:
            yield share
        finally:
            share.give_back()

    def _take(self, size: int) -> asyncio.Future[None] | None:
        """Take ``size`` bytes now (None), or queue for them (a future set once they are taken)."""
        if not self._waiting and self.used + size <= self.limit:
            self.used += size
            return None
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((size, future))
        return future

    def _release(self, size: int) -> None:
        self.used -= size
        while self._waiting:
            wanted, future = self._waiting[0]
            if not future.done() and self.used + wanted > self.limit:
                break
            self._waiting.popleft()
            if not future.done():
                self.used += wanted
                future.set_result(None)


class Hold:
    """One call's bytes in a RequestBudget."""

    def __init__(self, budget: RequestBudget) -> None:
        self.budget = budget
        self.size = 0

    async def resize(self, size: int) -> None:
        """Hold ``size`` bytes: a smaller size returns the difference at once, a larger one waits
        for room (ResourceExhausted if it could never fit). Waiting is for a call that holds
        nothing yet; one that does grows with ``grow_now``."""
        budget = self.budget
        if size <= self.size:
            budget._release(self.size - size)
            self.size = size
            return
        extra = size - self.size
        if size > budget.limit:
            raise ResourceExhausted(f"a request of {size} bytes does not fit the {budget.limit} bytes the "
                                    "server holds at once (setting max_inflight_request_bytes)")  # fmt: skip
        future = budget._take(extra)
        if future is not None:
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # NOTE: granted, then cancelled: give back
                    budget._release(extra)
                else:
                    future.cancel()
                    budget._release(0)  # lets the next in line go if this one was first
                raise
        self.size = size

    def grow_now(self, size: int) -> bool:
        """Hold ``size`` bytes if they fit now, queue or not; False if they do not. For a call that
        already holds bytes: it must never wait for more, or two such calls could wait for each other."""
        extra = size - self.size
        if extra > 0 and self.budget.used + extra > self.budget.limit:
            return False
        self.budget.used += max(extra, 0)
        self.size = max(size, self.size)
        return True

    def give_back(self) -> None:
        self.budget._release(self.size)
        self.size = 0


PEER_SHARE = 4
"""One client host may reserve at most 1/PEER_SHARE of the budget for messages being read at once."""


class _Peer:
    def __init__(self, slots: int) -> None:
        self.semaphore = asyncio.Semaphore(slots)
        self.users = 0


def peer_host(context: Context) -> str:
    """The client's host from ``context.peer()`` ("ipv4:10.0.0.1:5312" -> "ipv4:10.0.0.1")."""
    peer = context.peer() or ""
    host, colon, port = peer.rpartition(":")
    return host if colon and port.isdigit() else peer


class Reader:
    """Reads gRPC request messages under a RequestBudget, each within ``timeout_s``.

    Reading a message reserves ``reserve`` bytes (default ``max_message_bytes``) until it has
    arrived: gRPC core may buffer that much of it, and grpc.aio does not tell when its first bytes
    come. A message above ``max_message_bytes`` is refused. With ``per_peer``, the reads of one
    client host reserve at most 1/PEER_SHARE of the budget at once (the others wait, holding
    nothing), so that one client's stalled messages cannot take all of it. The second and later
    messages of a stream are waited for without a timeout or a reservation (a stream may stay open
    and idle), and held only if they fit the budget at once."""

    def __init__(
        self,
        budget: RequestBudget,
        max_message_bytes: int,
        timeout_s: float,
        *,
        reserve: int | None = None,
        per_peer: bool = False,
    ) -> None:
        self.budget = budget
        self.max_message_bytes = max_message_bytes
        self.reserve = reserve or max_message_bytes
        self.timeout_s = timeout_s
        self.peer_slots = max(1, budget.limit // PEER_SHARE // self.reserve) if per_peer else None
        self._peers: dict[str, _Peer] = {}

    @contextlib.asynccontextmanager
    async def _slot(self, context: Context) -> AsyncIterator[None]:
        """One of the client host's read slots (any time when reads are not capped per peer)."""
        if self.peer_slots is None:
            yield
            return
        host = peer_host(context)
        peer = self._peers.get(host)
        if peer is None:
            peer = self._peers[host] = _Peer(self.peer_slots)
        peer.users += 1
        try:
            async with peer.semaphore:
                yield
        finally:
            peer.users -= 1
            if peer.users == 0:
                del self._peers[host]

    async def read(self, context: Context, share: Hold) -> bytes | None:
        """The call's next message (raw bytes), added to ``share``; None when the client sends no
        more. ResourceExhausted or DeadlineExceeded when it did not arrive in time."""
        reading = False
        try:
            async with asyncio.timeout(self.timeout_s), self._slot(context):
                await share.resize(share.size + self.reserve)
                reading = True
                message = await context.read()
        except TimeoutError:
            if not reading:
                raise ResourceExhausted(
                    f"no room within {self.timeout_s:g} s to read the request: {self.budget.used} bytes of "
                    "requests are held (setting max_inflight_request_bytes); retry later"
                ) from None
            raise DeadlineExceeded(f"the request message did not arrive within {self.timeout_s:g} s "
                                   "(setting body_timeout_s)") from None  # fmt: skip
        received = message if isinstance(message, bytes) else None  # NOTE: aio.EOF at the end
        size = len(received or b"")
        if size > self.max_message_bytes:
            await share.resize(share.size - self.reserve)
            raise self._too_large(size)
        await share.resize(share.size - self.reserve + size)
        return received

    async def read_next(self, context: Context, share: Hold) -> bytes | None:
        """A stream's next message after its first: waited for as long as the client likes, unreserved."""
        message = await context.read()
        received = message if isinstance(message, bytes) else None
        size = len(received or b"")
        if size > self.max_message_bytes:
            raise self._too_large(size)
        if not share.grow_now(share.size + size):
            raise ResourceExhausted(f"no room to hold a message of {size} bytes: {self.budget.used} bytes "
                                    "of requests are held; retry later")  # fmt: skip
        return received

    def _too_large(self, size: int) -> ServiceError:
        return ResourceExhausted(f"the message of {size} bytes is larger than the {self.max_message_bytes} "
                                 "bytes this method accepts")  # fmt: skip

    def reading(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` with its request messages read under the budget, for the methods that
        ErrorInterceptor does not serve itself (health, reflection); it answers their errors."""
        parse = handler.request_deserializer or _unchanged
        raw = {"request_deserializer": None, "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(requests: Any, context: Context) -> Any:
                async with self.budget.hold() as share:
                    return await unary(await self._request(context, share, parse), context)

            return grpc.stream_unary_rpc_method_handler(unary_unary, **raw)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def unary_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
                async with self.budget.hold() as share:
                    async for answer in _answers(stream, await self._request(context, share, parse), context):
                        yield answer

            return grpc.stream_stream_rpc_method_handler(unary_stream, **raw)
        if handler.stream_unary is not None:
            collect = handler.stream_unary

            async def stream_unary(requests: Any, context: Context) -> Any:
                return await collect(self._requests(context, parse), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **raw)
        streams = handler.stream_stream

        async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            async for answer in _answers(streams, self._requests(context, parse), context):
                yield answer

        return grpc.stream_stream_rpc_method_handler(stream_stream, **raw)

    async def _request(self, context: Context, share: Hold, parse: Callable[[bytes], Any]) -> Any:
        """The call's one request, parsed; otherwise the call is answered with the error."""
        data = await self._message(context, share)
        if data is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the call carries no request message")
        return await _parsed(context, data, parse)

    async def _requests(self, context: Context, parse: Callable[[bytes], Any]) -> AsyncIterator[Any]:
        """A stream's requests, each held until the next one is asked for."""
        async with self.budget.hold() as share:
            data = await self._message(context, share)
            while data is not None:
                yield await _parsed(context, data, parse)
                await share.resize(0)
                data = await self._message(context, share, first=False)

    async def _message(self, context: Context, share: Hold, first: bool = True) -> bytes | None:
        try:
            return await (self.read if first else self.read_next)(context, share)
        except ServiceError as exc:
            failure = grpc.StatusCode[exc.code.name], exc.message
        # NOTE: answered outside the except block, so that no exception keeps the call's frames alive
        await abort(context, *failure)


async def abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    """``context.abort``, typed as what it does: it always raises."""
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _unchanged(data: bytes) -> bytes:
    return data


async def _parsed(context: Context, data: bytes, parse: Callable[[bytes], Any]) -> Any:
    try:
        return parse(data)
    except Exception:  # NOTE: protobuf's DecodeError (and what a custom deserializer raises)
        pass
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid protobuf message of this method"
    )


async def _answers(
    behaviour: Callable[[Any, Context], Any], request: Any, context: Context
) -> AsyncIterator[Any]:
    """What a streaming handler answers, whether it yields its answers or writes them itself."""
    answers = behaviour(request, context)
    if inspect.isawaitable(answers):
        await answers
        return
    async for answer in answers:
        yield answer
