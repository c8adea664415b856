"""TensorFlow Serving's REST API on the HTTP port, over the same core as the gRPC services.

    POST /v1/models/NAME[/versions/N | /labels/L]:predict   {"instances": [...]} or {"inputs": ...}
    GET  /v1/models/NAME[/versions/N]                        version status
    GET  /v1/models/NAME[/versions/N]/metadata               signature defs

Signatures as over gRPC: ``serving_default`` takes pixels (an instance is an [H, W, 3] nested list,
or {"image": ...}); ``predict_images`` takes encoded images as {"b64": "..."}. Errors are
``{"error": "..."}`` with the HTTP status of their gRPC code. aiohttp serves it on the gRPC server's
own asyncio loop (no second thread or process, no copy of the core), and one middleware does for
REST what the gRPC interceptor does: request ids, metrics, the error map.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from tlserve import repository as repo
from tlserve.service.auth import Tokens
from tlserve.service.core import InferenceCore
from tlserve.service.domain import ModelRef
from tlserve.service.errors import Code, InvalidArgument, release
from tlserve.service.metrics import Metrics
from tlserve.service.parsing import parse_version
from tlserve.service.transport.budget import RequestBudget
from tlserve.service.transport.calls import STATUS, CallObserver
from tlserve.service.transport.http import (
    LARGE_BODY_BYTES,
    LIMITS,
    SHARE,
    BodyLimits,
    continue_later,
    json_numbers,
    max_json_values,
    parse_json,
    read_body,
)
from tlserve.service.transport.offloop import off_loop
from tlserve.service.transport.oip_rest import OipRest
from tlserve.service.transport.tfs import SIGNATURE_INPUTS, model_status, signature_defs

HTTP_CODES = {404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED"}
"""The code counted for aiohttp's HTTP errors (others: INVALID_ARGUMENT)."""
JSON = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
"""Protos as TF Serving's REST API writes them (snake_case names, zeros and empty strings shown)."""
NAME = r"{name:[^/:]+}"
VERSION = r"{version:[0-9]+}"
LABEL = r"{label:[^/:]+}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, rid: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={"x-request-id": rid})


HEALTH_PATHS = ("/v2/health/",)


def middleware(observer: CallObserver, tokens: Tokens | None, budget: RequestBudget) -> Any:
    @web.middleware
    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request.headers.get("x-request-id", "")[:128] or uuid.uuid4().hex
        method = request.match_info.get("method", request.method)
        with observer.call("rest", method, rid, f"{request.method} {request.path}") as call:
            try:
                if tokens is not None and not request.path.startswith(HEALTH_PATHS):
                    tokens.check(request.headers.get("Authorization"))
                async with budget.hold() as share:
                    request[SHARE] = share
                    response = await handler(request)
                response.headers["x-request-id"] = rid
                return response
            except web.HTTPException as exc:  # 404 unknown path, 405; 408, 413, 417 from http.read_body
                call.code = HTTP_CODES.get(exc.status, "INVALID_ARGUMENT")
                release(exc)
                own = exc.text and not exc.text.startswith(
                    f"{exc.status}: "
                )  # NOTE: aiohttp's own say only that
                response = _error(exc.status, f"{exc.reason}: {exc.text}" if own else exc.reason, rid)
                if exc.status in (408, 413):  # NOTE: the body was not read: do not wait for it
                    response.force_close()
                return response
            except Exception as exc:
                code, message = call.failed(exc, f"{request.method} {request.path}")
                release(exc)
                response = _error(STATUS[code][1], message, rid)
                if code is Code.UNAUTHENTICATED:
                    response.headers["WWW-Authenticate"] = 'Bearer realm="tlserve"'
                return response

    return handle


async def _json(request: web.Request, max_values: int) -> tuple[dict[str, Any], bool]:
    """The body's JSON object, and whether it was large."""
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise InvalidArgument(
            f"expected a JSON body (Content-Type application/json); got {request.content_type}"
        )
    data = await read_body(request)
    return await parse_json(data, max_values, request[SHARE]), len(data) >= LARGE_BODY_BYTES


def _ref(request: web.Request) -> ModelRef:
    info = request.match_info
    return ModelRef(info["name"], parse_version(info.get("version", "")), info.get("label"))


def _b64(value: Any, where: str) -> bytes:
    if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
        raise InvalidArgument(f'{where}: an encoded image must be {{"b64": "..."}}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{where}: not valid base64") from None


def _unwrap(items: Any, name: str, rows: bool) -> Any:
    """The values of input ``name`` from the row ("instances") or columnar ("inputs") format."""
    if rows:
        if not isinstance(items, list):
            raise InvalidArgument('"instances" must be a list, one element per example')
        return [item[name] if isinstance(item, dict) and set(item) == {name} else item for item in items]
    if isinstance(items, dict):
        if set(items) != {name}:
            raise InvalidArgument(f'"inputs" must name exactly the input {name!r}; got {sorted(items)}')
        return items[name]
    return items


class RestApi:
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def routes(self, app: web.Application) -> None:
        for prefix in (
            f"/v1/models/{NAME}",
            f"/v1/models/{NAME}/versions/{VERSION}",
            f"/v1/models/{NAME}/labels/{LABEL}",
        ):
            app.router.add_post(prefix + ":{method:predict}", self.predict, expect_handler=continue_later)
            app.router.add_get(prefix, self.status)
            app.router.add_get(prefix + "/metadata", self.metadata)

    async def predict(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        image_size = self.core.metadata(ref).image_size
        body, large = await _json(request, max_json_values(self.core.settings, image_size))
        signature = body.get("signature_name")
        if signature is not None and not isinstance(signature, str):
            raise InvalidArgument(f'"signature_name" must be a string; got {type(signature).__name__}')
        signature = signature or repo.SIGNATURE_PIXELS
        if signature not in SIGNATURE_INPUTS:
            raise InvalidArgument(
                f"signature {signature!r} not found; this model has {', '.join(SIGNATURE_INPUTS)}"
            )
        if ("instances" in body) == ("inputs" in body):
            raise InvalidArgument(
                'send exactly one of "instances" (row format) or "inputs" (columnar format)'
            )
        rows = "instances" in body
        name = SIGNATURE_INPUTS[signature]
        values = _unwrap(body["instances"] if rows else body["inputs"], name, rows)
        if signature == repo.SIGNATURE_IMAGES:
            if not isinstance(values, list):
                raise InvalidArgument(f'{name}: expected a list of {{"b64": ...}} images')
            inputs = [_b64(v, f"{name}[{i}]") for i, v in enumerate(values)]
            result = await self.core.infer(ref, inputs)
        else:
            message = f"{name}: expected nested lists of numbers [N, H, W, 3]"
            result = await self.core.infer(ref, await off_loop(large, json_numbers, values, message))
        probabilities = result.probabilities.tolist()
        return web.json_response({"predictions": probabilities} if rows else {"outputs": probabilities})

    async def status(self, request: web.Request) -> web.Response:
        status = model_status(self.core.status(_ref(request)))
        return web.json_response(json_format.MessageToDict(status, **JSON))

    async def metadata(self, request: web.Request) -> web.Response:
        metadata = self.core.metadata(_ref(request))
        defs = json_format.MessageToDict(signature_defs(metadata), **JSON)
        return web.json_response({
            "model_spec": {"name": metadata.name, "signature_name": "", "version": str(metadata.version)},
            "metadata": {"signature_def": defs},
        })  # fmt: skip


def make_app(
    core: InferenceCore,
    metrics: Metrics,
    budget: RequestBudget,
    access_log: bool,
    tokens: Tokens | None = None,
) -> web.Application:
    settings = core.settings
    app = web.Application(
        client_max_size=settings.max_message_bytes,
        middlewares=[middleware(CallObserver(metrics, access_log), tokens, budget)],
    )
    app[LIMITS] = BodyLimits(
        settings.max_message_bytes, settings.body_timeout_s, settings.max_decompression_ratio
    )
    RestApi(core).routes(app)
    OipRest(core).routes(app)
    return app
