"""The server: TF Serving's API, the Open Inference Protocol (KServe v2) and the native API over gRPC and,
for TF Serving and OIP, REST; health and reflection on the gRPC port; metrics on another.

Lifecycle: bind the ports (port 0 picks a free one; the chosen ports are logged), start answering at
once (health says NOT_SERVING while models load), load the repository, then poll it. On SIGTERM or
SIGINT: health turns NOT_SERVING, new calls are refused, in-flight calls get ``shutdown_grace_s`` to
finish, every version is drained and unloaded, exit code 0.

Health: the overall service ("") is SERVING once the first repository scan is done and at least one
model serves; each model name is its own service, SERVING while a version of it is loaded and warm.

What clients can make it hold is bounded here (docs/security.md): streams per connection, calls in
progress, connections on each port (and the open-file limit raised to fit them), the HTTP/2 window
of a call not being read, one budget for the request bytes held (transport.budget) and, for REST,
idle and body timeouts (transport.http).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from tlserve.service import logs
from tlserve.service.auth import auth_tokens
from tlserve.service.capture import Capturer
from tlserve.service.core import InferenceCore
from tlserve.service.decoding import Decoder
from tlserve.service.metrics import Metrics
from tlserve.service.registry import ModelRegistry
from tlserve.service.settings import ServerSettings
from tlserve.service.tls import ANY_ADDRESS, is_loopback, tls_context, tls_credentials, tls_summary
from tlserve.service.transport import oip, rest, wirescan
from tlserve.service.transport.auth import AuthInterceptor
from tlserve.service.transport.budget import Reader, RequestBudget
from tlserve.service.transport.calls import CallObserver
from tlserve.service.transport.errors import ErrorInterceptor
from tlserve.service.transport.health import HealthServicer
from tlserve.service.transport.http import ProtocolLog, RestRunner
from tlserve.service.transport.native import InferenceService
from tlserve.service.transport.tfs import ModelService, PredictionService
from tlserve.service.wire import _pool
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from tlserve.service.wire.tfs import serving_pb2, serving_pb2_grpc
from tlserve.service.wire.tlserve.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    serving_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    serving_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


SIDE_TIMEOUT_S = 2.0
"""How long a health or reflection request message may take to arrive on the gRPC port."""
HEALTH_MESSAGE_BYTES = 64 * 1024
"""The largest health or reflection request message (a HealthCheckRequest holds a service name),
on the gRPC port and on the health-only port."""


def channel_options(settings: ServerSettings, max_message_bytes: int | None = None) -> list[tuple[str, Any]]:
    """Every server channel option in one place."""
    received = max_message_bytes or settings.max_message_bytes
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", received),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),  # NOTE: else a second server silently shares the port
        ("grpc.max_metadata_size", settings.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_metadata_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", settings.max_grpc_connections),
        # NOTE: a call the server is not reading keeps this window; bandwidth-delay probing would
        # grow every window to megabytes (measured: 4 MB buffered per unread call, 64 KiB without)
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", settings.stream_window_bytes),
    ]
    if settings.max_connection_age_s is not None:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ]
    if settings.keepalive_time_s is not None:
        options += [("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
                    ("grpc.http2.max_pings_without_data", 0)]  # fmt: skip
    return options


OWN_FILES = 256
"""File descriptors the server keeps for itself: model files, the metrics and health ports, logs."""


def raise_open_file_limit(connections: int) -> None:
    """Raise the soft open-file limit (up to the hard one) to fit ``connections`` plus OWN_FILES."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + OWN_FILES
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning("the open-file limit (%d) is below the %d that max_grpc_connections + "
                    "max_http_connections + %d need: lower them, or raise the limit (ulimit -n)",
                    target, needed, OWN_FILES)  # fmt: skip


@dataclass
class Ports:
    grpc: int
    http: int | None
    metrics: int | None
    health: int | None = None


_PORT_FLAGS = {
    "gRPC": "--grpc-port", "health": "--health-port", "REST": "--http-port", "metrics": "--metrics-port",
}  # fmt: skip


def _bind_error(what: str, host: str, port: int, reason: str) -> OSError:
    return OSError(f"cannot bind {what} to {host}:{port}: {reason}; choose another port with "
                   f"{_PORT_FLAGS[what]} (0 picks a free one)")  # fmt: skip


def _bind(
    server: aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None, what: str
) -> int:
    address = f"{host}:{port}"
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        # NOTE: grpc says only "Failed to bind ... set GRPC_VERBOSITY=debug": the port is taken (by
        # any process: so_reuseport is off), privileged, or the address is not this host's
        raise _bind_error(what, host, port, "the port is in use or not allowed here") from exc


class Server:
    """One server; ``start()`` then ``run_until(stop)``, or ``serve()`` for the CLI."""

    def __init__(self, settings: ServerSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = HealthServicer(settings.max_health_watches)
        self._compute = ThreadPoolExecutor(settings.compute_threads, thread_name_prefix="tlserve-compute")
        self._decoder = Decoder(settings)
        self.registry = ModelRegistry(
            settings, self._compute, metrics=self.metrics, on_change=self._model_changed
        )
        self._capture = Capturer(settings, self.metrics) if settings.capture_dir is not None else None
        self.core = InferenceCore(self.registry, settings, self._decoder, self._capture)
        self.tokens = auth_tokens(settings)
        self.budget = RequestBudget(settings.max_inflight_request_bytes)
        reader = Reader(self.budget, settings.max_message_bytes, settings.body_timeout_s, per_peer=True)
        # NOTE: health and reflection read from a budget of their own (a client needs no token to
        # stall a health check, and must not stall inference with it), with a short timeout: their
        # messages are tiny and arrive with the call. Each read reserves HEALTH_MESSAGE_BYTES from
        # room for every call the server takes at once, so that stalled ones never keep a probe out
        side_timeout_s = min(settings.body_timeout_s, SIDE_TIMEOUT_S)
        side_budget = RequestBudget(settings.max_concurrent_calls * HEALTH_MESSAGE_BYTES)
        side = Reader(side_budget, HEALTH_MESSAGE_BYTES, side_timeout_s)
        fields = wirescan.max_fields(settings.max_batch_size)
        errors = ErrorInterceptor(CallObserver(self.metrics, settings.access_log), reader, side, fields)
        interceptors: list[aio.ServerInterceptor] = [errors]
        if self.tokens is not None:
            interceptors.append(AuthInterceptor(self.tokens))
        self._grpc = aio.server(interceptors=interceptors, options=channel_options(settings),
                                maximum_concurrent_rpcs=settings.max_concurrent_calls)  # fmt: skip
        self._health_grpc: aio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics_http: Any = None
        self._rest: web.AppRunner | None = None

    def _model_changed(self, name: str, serving: bool) -> None:
        self.metrics.set_ready(name, serving)
        self._set_health(name, serving)
        self._set_health("", self.registry.ready)

    def _set_health(self, service: str, serving: bool) -> None:
        task = asyncio.get_running_loop().create_task(
            self.health.set(service, SERVING if serving else NOT_SERVING)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> Ports:
        """Bind, start answering, load the repository. Raises OSError when a port cannot be bound."""
        raise_open_file_limit(self.settings.max_grpc_connections + self.settings.max_http_connections)
        serving_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.core), self._grpc)
        serving_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.core), self._grpc)
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(self.core), self._grpc)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            oip.InferenceService(self.core), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(SERVICE_NAMES, self._grpc, pool=_pool.POOL)
        credentials = tls_credentials(self.settings)
        port = _bind(self._grpc, self.settings.host, self.settings.grpc_port, credentials, "gRPC")
        health_port = None
        if self.settings.health_port is not None:  # plaintext, health only: for Kubernetes probes
            options = channel_options(self.settings, HEALTH_MESSAGE_BYTES)
            self._health_grpc = aio.server(
                options=options, maximum_concurrent_rpcs=self.settings.max_concurrent_calls
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_grpc)
            health_port = _bind(
                self._health_grpc, self.settings.host, self.settings.health_port, None, "health"
            )
        await self.health.set("", NOT_SERVING)
        await self._grpc.start()
        if self._health_grpc is not None:
            await self._health_grpc.start()
        http_port = None
        if self.settings.http_port is not None:
            app = rest.make_app(self.core, self.metrics, self.budget, self.settings.access_log, self.tokens)
            # NOTE: aiohttp answers malformed HTTP itself; ProtocolLog makes its log of them one line
            # NOTE: lingering: how long a body left unread (a 413, a 408) is still read and dropped
            # before the connection is closed, so that the client sees the answer (aiohttp: 10 s)
            refused = self.metrics.connections_refused.labels(api="rest").inc
            self._rest = RestRunner(app, self.settings.max_http_connections, refused, access_log=None,
                                    handle_signals=False, logger=ProtocolLog(port), lingering_time=2.0,
                                    keepalive_timeout=self.settings.http_keepalive_timeout_s)  # fmt: skip
            await self._rest.setup()
            site = web.TCPSite(self._rest, self.settings.host, self.settings.http_port, reuse_port=False,
                               ssl_context=tls_context(self.settings))  # fmt: skip
            try:
                await site.start()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise _bind_error("REST", self.settings.host, self.settings.http_port, reason) from exc
            http_port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        metrics_port = None
        if self.settings.metrics_port is not None:
            try:
                self._metrics_http, _ = start_http_server(
                    self.settings.metrics_port, addr=self.settings.host, registry=self.metrics.registry
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise _bind_error("metrics", self.settings.host, self.settings.metrics_port, reason) from exc
            metrics_port = int(self._metrics_http.server_port)
        ports = Ports(port, http_port, metrics_port, health_port)
        host = self.settings.host
        log.info("listening: grpc=%s:%d http=%s metrics=%s health=%s", host, port,
                 f"{host}:{http_port}" if http_port is not None else "off",
                 f"{host}:{metrics_port}" if metrics_port is not None else "off",
                 f"{host}:{health_port}" if health_port is not None else "off")  # fmt: skip
        log.info("security: %s; %s", tls_summary(self.settings),
                 f"bearer tokens required ({self.tokens.count} accepted; health exempt)"
                 if self.tokens is not None else "no authentication")  # fmt: skip
        if not self.settings.tls and self.tokens is None and not is_loopback(host):
            log.warning("serving plaintext with no authentication on %s: anyone who can reach these "
                        "ports can call them; turn on TLS (--tls-cert-file and --tls-key-file) or bearer "
                        "tokens (--auth-tokens-file), or bind --host 127.0.0.1 (docs/security.md)",
                        f"every interface ({host})" if host in ANY_ADDRESS else host)  # fmt: skip
        await self.registry.poll()
        ready = [n for n, m in sorted(self.registry.models.items()) if m.serving]
        self._set_health("", bool(ready))
        log.info(
            "ready: serving %s", ", ".join(ready) if ready else "no model yet (waiting for the repository)"
        )
        return ports

    async def run_until(self, stop: asyncio.Event) -> None:
        """Poll the repository until ``stop`` is set, then shut down gracefully."""
        watcher = asyncio.get_running_loop().create_task(self.registry.watch(stop))
        await stop.wait()
        watcher.cancel()  # NOTE: before unloading, or a scan in progress could load versions again
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info(
            "shutting down: refusing new calls, %.1f s for in-flight ones", self.settings.shutdown_grace_s
        )
        await self.health.enter_graceful_shutdown()
        stopping = [self._grpc.stop(self.settings.shutdown_grace_s)]
        if self._rest is not None:  # NOTE: both refuse new calls and drain together
            stopping.append(self._rest.cleanup())
        await asyncio.gather(*stopping)
        if self._health_grpc is not None:  # NOTE: last: probes see NOT_SERVING while the others drain
            await self._health_grpc.stop(0)
        await self.registry.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self._compute.shutdown(wait=False)
        self._decoder.close()
        if self._capture is not None:  # NOTE: writes what is queued, for up to 5 s, off the loop
            await asyncio.get_running_loop().run_in_executor(None, self._capture.close)
        log.info("stopped")


async def _serve(settings: ServerSettings, on_ports: Callable[[Ports], None] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    server = Server(settings)

    def stopping() -> None:
        stop.set()
        server.registry.interrupt()  # NOTE: a download in progress (the first scan's too) is abandoned

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    ports = await server.start()
    try:
        if settings.ports_file is not None:
            write_ports_file(settings.ports_file, ports)
        if on_ports is not None:
            on_ports(ports)
        await server.run_until(stop)
    finally:
        if settings.ports_file is not None:
            remove_ports_file(settings.ports_file)


def write_ports_file(path: Path, ports: Ports) -> None:
    """The bound ports as JSON, for the healthcheck (settings.ports_file); atomic, so that a probe
    never reads half a file."""
    text = json.dumps({"grpc": ports.grpc, "http": ports.http, "metrics": ports.metrics,
                       "health": ports.health, "pid": os.getpid()})  # fmt: skip
    partial = path.parent / f".{path.name}.{os.getpid()}.partial"
    try:
        partial.write_text(text + "\n")
        partial.replace(path)
    except OSError as exc:  # NOTE: e.g. a read-only root filesystem, or a directory: serving goes on
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.warning("cannot write the ports file %s (%s): the healthcheck probes TLSERVE_HEALTH_PORT, "
                    "TLSERVE_GRPC_PORT or 8500 instead; set --ports-file to a writable path",
                    path, exc.strerror or exc)  # fmt: skip


def remove_ports_file(path: Path) -> None:
    """Remove the ports file if it is still this process' (another server may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def serve(settings: ServerSettings, on_ports: Callable[[Ports], None] | None = None) -> None:
    """Run a server until SIGTERM/SIGINT (the CLI's ``tlserve serve``)."""
    logs.configure(settings.log_level, settings.log_format)
    log.info("settings: %s", settings.public())
    asyncio.run(_serve(settings, on_ports))
