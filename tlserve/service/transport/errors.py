"""The one place where errors become gRPC statuses, calls are timed and request ids assigned.

ServiceError -> its code and message. Anything else -> INTERNAL with a generic message carrying the
request id; the traceback goes to the log with the same id. The request message is parsed here too,
not by grpcio before the handler: bytes that are not the method's protobuf message (garbage, invalid
UTF-8 in a string field) are INVALID_ARGUMENT and counted like any other call; grpcio itself would
answer UNKNOWN with a traceback and no metrics. The request id is the client's
``x-request-id`` metadata when sent (else a new one) and is echoed in the response's trailing metadata.
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
from tlserve.service.errors import Code, InvalidArgument, ServiceError
from tlserve.service.metrics import Metrics, current_model

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
    def __init__(self, metrics: Metrics, access_log: bool = False) -> None:
        self.metrics = metrics
        self.access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or handler.unary_unary is None or method.startswith(_UNTIMED):
            return handler
        service, _, name = method.strip("/").partition("/")
        api = API_NAMES.get(service, service)
        behaviour = handler.unary_unary
        deserialize = handler.request_deserializer  # NOTE: None when auth refused the call unparsed
        metrics = self.metrics
        access_log = self.access_log

        async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            rid = request_id(context)
            logs.request_id.set(rid)
            # NOTE: trailing metadata rides with the status; initial metadata would cost a write
            context.set_trailing_metadata(((REQUEST_ID, rid),))
            start = time.perf_counter()
            current_model.set(("", ""))
            code = grpc.StatusCode.OK
            metrics.in_flight.labels(api).inc()
            try:
                return await behaviour(_parse(deserialize, request), context)
            except ServiceError as exc:
                code = grpc_code(exc.code)
                if exc.code is Code.INTERNAL:
                    log.error("%s failed [request id %s]: %s", method, rid, exc.message)
                    await context.abort(
                        code, f"internal error (request id {rid}); the server log has the details"
                    )
                log.debug("%s %s [%s]: %s", name, code.name, rid, exc.message)
                await context.abort(code, exc.message, trailing_metadata=((REQUEST_ID, rid),))
            except asyncio.CancelledError:  # gRPC cancels the handler when the client's deadline passes
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed [request id %s]", method, rid)
                await context.abort(
                    code, f"internal error (request id {rid}); the server log has the details"
                )
            finally:
                metrics.in_flight.labels(api).dec()
                model, version = current_model.get()
                labels = (model, version, api, name, code.name)
                elapsed = time.perf_counter() - start
                metrics.request_duration.labels(*labels).observe(elapsed)
                metrics.requests.labels(*labels).inc()
                if access_log:
                    log.info("%s %s model=%s version=%s code=%s %.2f ms", api, name, model or "-",
                             version or "-", code.name, elapsed * 1000)  # fmt: skip

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=None, response_serializer=handler.response_serializer
        )


def _parse(deserialize: Callable[[bytes], Any] | None, data: Any) -> Any:
    if deserialize is None:
        return data
    try:
        return deserialize(data)
    except DecodeError as exc:
        raise InvalidArgument(f"the request is not a valid protobuf message of this method: {exc}") from None
