"""The gRPC side of every call: request ids, errors to gRPC statuses, timing (transport.calls).

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
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from tlserve.service.errors import Code, InvalidArgument, release
from tlserve.service.transport import wirescan
from tlserve.service.transport.budget import Hold, Reader
from tlserve.service.transport.calls import STATUS, CallObserver
from tlserve.service.transport.offloop import off_loop

REQUEST_ID = "x-request-id"
_UNTIMED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
API_NAMES = {
    "tensorflow.serving.PredictionService": "tfs",
    "tensorflow.serving.ModelService": "tfs",
    "tlserve.v1.Inference": "native",
    "inference.GRPCInferenceService": "oip",
}


def request_id(context: aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class ErrorInterceptor(aio.ServerInterceptor):
    def __init__(self, observer: CallObserver, reader: Reader, side: Reader, max_fields: int) -> None:
        """``reader`` reads the requests of the APIs' methods, ``side`` those of health and reflection;
        a request of more than ``max_fields`` protobuf fields is refused unparsed (wirescan)."""
        self.observer = observer
        self.reader = reader
        self.side = side
        self.max_fields = max_fields

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
        observer = self.observer

        # NOTE: a stream-unary handler: grpc.aio runs it when the call's headers arrive, before the
        # request is read (a unary-unary one gets the whole request first); the client sees no difference
        async def wrapped(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            rid = request_id(context)
            # NOTE: trailing metadata rides with the status; initial metadata would cost a write
            context.set_trailing_metadata(((REQUEST_ID, rid),))
            code, message = Code.INTERNAL, ""
            with observer.call(api, name, rid) as call:
                try:
                    async with budget.hold() as share:
                        return await behaviour(requests, context, share)
                except asyncio.CancelledError:  # gRPC cancels the handler when the client's deadline passes
                    remaining = context.time_remaining()
                    call.code = (
                        "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
                    )
                    raise
                except aio.AbortError:
                    call.code = (context.code() or grpc.StatusCode.UNKNOWN).name
                    raise
                except Exception as exc:
                    code, message = call.failed(exc, method)
                    release(exc)
            # NOTE: outside the except blocks: the abort's own exception must not keep the failure
            # (and with it every frame the request passed through) alive
            await context.abort(STATUS[code][0], message, trailing_metadata=((REQUEST_ID, rid),))

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
        if descriptor is not None and len(data) >= wirescan.SCAN_FROM_BYTES:
            # NOTE: in a thread: a walk that ends at the budget of a 56 MB message of tiny fields
            # takes seconds of Python (the loop still gets the GIL every switch interval)
            request = await off_loop(True, _scan_and_parse, deserialize, descriptor, data, max_fields)
        else:
            request = _parse(deserialize, data)
        del data  # NOTE: the raw bytes need not stay alive while the request is served
        return await servicer(request, context)

    return call


def _scan_and_parse(
    deserialize: Callable[[bytes], Any] | None, descriptor: Any, data: bytes, max_fields: int
) -> Any:
    """A large message, parsed once its fields are known to fit the budget (wirescan)."""
    limit = wirescan.limit_for(max_fields, len(data))
    if not wirescan.within(data, descriptor, limit):
        raise InvalidArgument(f"the request holds more than {limit} protobuf fields (repeated "
                              "elements and nested messages counted), far more than max_batch_size "
                              "images need")  # fmt: skip
    return _parse(deserialize, data)


def _parse(deserialize: Callable[[bytes], Any] | None, data: bytes) -> Any:
    if deserialize is None:
        return data
    try:
        return deserialize(data)
    except DecodeError as exc:
        raise InvalidArgument(f"the request is not a valid protobuf message of this method: {exc}") from None
