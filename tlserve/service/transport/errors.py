"""The one place where errors become gRPC statuses, calls are timed and request ids assigned.

ServiceError -> its code and message. Anything else -> INTERNAL with a generic message carrying the
request id; the traceback goes to the log with the same id. The request message is parsed here too,
not by grpcio before the handler: bytes that are not the method's protobuf message (garbage, invalid
UTF-8 in a string field) are INVALID_ARGUMENT and counted like any other call; grpcio itself would
answer UNKNOWN with a traceback and no metrics. It is also read here, under the request budget
(tlserve.service.transport.budget), only once the call has been let in. The request id is the client's
``x-request-id`` metadata when sent (else a new one) and is echoed in the response's trailing metadata.

A failed call leaves nothing of its request behind: its error's traceback is dropped (``release``;
frames are never cleared, which would kill a suspended coroutine on it, such as a batcher's loop)
and the status is sent after the except block, so that no exception keeps them alive until the
garbage collector runs (four rejected 60 MB requests once held 5.5 GB that way).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from tlserve.service import logs
from tlserve.service.errors import Code, InvalidArgument, ServiceError, release
from tlserve.service.metrics import Metrics, current_model
from tlserve.service.transport import wirescan
from tlserve.service.transport.budget import Hold, Reader

log = logging.getLogger(__name__)
REQUEST_ID = "x-request-id"
_UNTIMED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
API_NAMES = {
    "tensorflow.serving.PredictionService": "tfs",
    "tensorflow.serving.ModelService": "tfs",
    "tlserve.v1.Inference": "native",
    "inference.GRPCInferenceService": "oip",
}


def grpc_code(code: Code) -> grpc.StatusCode:
    return grpc.StatusCode[code.name]


def request_id(context: aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class ErrorInterceptor(aio.ServerInterceptor):
    def __init__(
        self, metrics: Metrics, reader: Reader, side: Reader, max_fields: int, access_log: bool = False
    ) -> None:
        """``reader`` reads the requests of the APIs' methods, ``side`` those of health and reflection;
        a request of more than ``max_fields`` protobuf fields is refused unparsed (wirescan)."""
        self.metrics = metrics
        self.reader = reader
        self.side = side
        self.max_fields = max_fields
        self.access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None:
            return handler
        if method.startswith(_UNTIMED) or (handler.unary_unary is None and handler.stream_unary is None):
            return self.side.reading(handler)
        service, _, name = method.strip("/").partition("/")
        api = API_NAMES.get(service, service)
        behaviour = _unary(handler, self.reader, self.max_fields)
        budget = self.reader.budget
        metrics = self.metrics
        access_log = self.access_log

        # NOTE: a stream-unary handler: grpc.aio runs it when the call's headers arrive, before the
        # request is read (a unary-unary one gets the whole request first); the client sees no difference
        async def wrapped(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            rid = request_id(context)
            logs.request_id.set(rid)
            # NOTE: trailing metadata rides with the status; initial metadata would cost a write
            context.set_trailing_metadata(((REQUEST_ID, rid),))
            start = time.perf_counter()
            current_model.set(("", ""))
            code = grpc.StatusCode.OK
            metrics.in_flight.labels(api).inc()
            try:
                async with budget.hold() as share:
                    return await behaviour(requests, context, share)
            except ServiceError as exc:
                code = grpc_code(exc.code)
                message = exc.message
                if exc.code is Code.INTERNAL:
                    log.error("%s failed [request id %s]: %s", method, rid, exc.message)
                    message = f"internal error (request id {rid}); the server log has the details"
                log.debug("%s %s [%s]: %s", name, code.name, rid, exc.message)
                release(exc)
            except asyncio.CancelledError:  # gRPC cancels the handler when the client's deadline passes
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed [request id %s]", method, rid)
                message = f"internal error (request id {rid}); the server log has the details"
                release(exc)
            finally:
                metrics.in_flight.labels(api).dec()
                model, version = current_model.get()
                labels = (model, version, api, name, code.name)
                elapsed = time.perf_counter() - start
                metrics.request_duration.labels(*labels).observe(elapsed)
                metrics.requests.labels(*labels).inc()
                if access_log:
                    logs.access.info("%s %s model=%s version=%s code=%s %.2f ms", api, name, model or "-",
                             version or "-", code.name, elapsed * 1000)  # fmt: skip
            # NOTE: outside the except blocks: the abort's own exception must not keep the failure
            # (and with it every frame the request passed through) alive
            await context.abort(code, message, trailing_metadata=((REQUEST_ID, rid),))

        return grpc.stream_unary_rpc_method_handler(
            wrapped, request_deserializer=None, response_serializer=handler.response_serializer
        )


Behaviour = Callable[[Any, aio.ServicerContext[Any, Any], Hold], Awaitable[Any]]


def _unary(handler: grpc.RpcMethodHandler, reader: Reader, max_fields: int) -> Behaviour:
    """The call of a unary method: read its request under the budget, parse it, run the servicer.
    A stream-unary ``handler`` is AuthInterceptor's refusal: it answers without reading."""
    if handler.unary_unary is None:
        refusal = handler.stream_unary

        async def refuse(requests: Any, context: aio.ServicerContext[Any, Any], share: Hold) -> Any:
            return await refusal(requests, context)

        return refuse
    servicer = handler.unary_unary
    deserialize = handler.request_deserializer
    descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)  # Message.FromString

    async def call(requests: Any, context: aio.ServicerContext[Any, Any], share: Hold) -> Any:
        data = await reader.read(context, share)
        if data is None:
            raise InvalidArgument("the call carries no request message")
        large = descriptor is not None and len(data) >= wirescan.SCAN_FROM_BYTES
        limit = wirescan.limit_for(max_fields, len(data))
        if large and not wirescan.within(data, descriptor, limit):
            raise InvalidArgument(f"the request holds more than {limit} protobuf fields (repeated "
                                  "elements and nested messages counted), far more than max_batch_size "
                                  "images need")  # fmt: skip
        request = _parse(deserialize, data)
        del data  # NOTE: the raw bytes need not stay alive while the request is served
        return await servicer(request, context)

    return call


def _parse(deserialize: Callable[[bytes], Any] | None, data: bytes) -> Any:
    if deserialize is None:
        return data
    try:
        return deserialize(data)
    except DecodeError as exc:
        raise InvalidArgument(f"the request is not a valid protobuf message of this method: {exc}") from None
