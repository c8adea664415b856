"""One typed settings object for the server.

Sources, highest priority first: command-line flags, ``TLSERVE_*`` environment variables, a config
file (``--config FILE`` or ``TLSERVE_CONFIG``, JSON or TOML), the defaults below. Nested fields use
``__`` in the environment: ``TLSERVE_MODELS__FLOWERS__BACKEND=tensorflow``.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from tlserve import repository as repo
from tlserve import storage
from tlserve.errors import UsageError
from tlserve.service import gif

_PARTIAL: contextvars.ContextVar[bool] = contextvars.ContextVar("partial_settings", default=False)
"""True while ``load_settings`` reads the environment alone: checks across settings wait for the merge."""
Backend = Literal["onnxruntime", "tensorflow"]
Precision = Literal["auto", "fp32", "fp16", "int8"]
_POLICY = re.compile(r"^(latest(:[1-9][0-9]*)?|all|versions:[1-9][0-9]*(,[1-9][0-9]*)*)$")
PROVIDER_ALIASES = {"tensorrt": repo.TENSORRT, "cuda": repo.CUDA, "cpu": repo.CPU}


class VersionPolicy:
    """Which versions on disk to serve: ``latest[:N]`` (default N=1), ``all``, ``versions:1,3``."""

    def __init__(self, text: str) -> None:
        if not _POLICY.match(text):
            raise ValueError(f"version policy {text!r} is not one of latest, latest:N, all, versions:A,B,...")
        self.text = text
        kind, _, arg = text.partition(":")
        self.kind = kind
        self.latest = int(arg) if kind == "latest" and arg else 1
        self.versions = {int(v) for v in arg.split(",")} if kind == "versions" else set()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among ``available`` (ascending), ascending."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "versions":
            return sorted(v for v in available if v in self.versions)
        return sorted(available)[-self.latest :]


class ModelSettings(BaseModel):
    """Per-model overrides, keyed by model name under ``models`` (config file or env)."""

    # NOTE: a misspelt key is refused, from a config file or from TLSERVE_MODELS__NAME__KEY alike
    model_config = ConfigDict(extra="forbid")

    backend: Backend | None = None
    """Runtime for this model; default: the server-wide ``backend``."""
    precision: Precision | None = None
    version_policy: str | None = None
    version_labels: dict[str, int] = Field(default_factory=dict)
    """Names clients may use instead of a number, e.g. ``{"stable": 3, "canary": 4}``."""
    unknown_below: float | None = Field(None, ge=0.0, le=1.0)
    """Answer the label ``unknown`` first (score 1 - the top score) when an image's top calibrated
    score is below this; off when unset. Choose it from the manifest's calibration (docs/serving.md,
    "Unknown")."""
    unknown_novelty_above: float | None = Field(None, gt=0.0)
    """Answer ``unknown`` first when an image's novelty is above this (1.0: farther from every class
    than 95 % of that class's training images); off when unset; needs reference statistics."""
    capture_sample: float | None = Field(None, ge=0.0, le=1.0)
    """This model's ``capture_sample``; default: the server-wide one."""
    capture_below: float | None = Field(None, ge=0.0, le=1.0)
    """This model's ``capture_below``; default: the server-wide one."""
    capture_novelty_above: float | None = Field(None, gt=0.0)
    """This model's ``capture_novelty_above``; default: the server-wide one."""

    @property
    def captures(self) -> bool:
        """Whether any capture trigger is on."""
        return (
            bool(self.capture_sample)
            or self.capture_below is not None
            or (self.capture_novelty_above is not None)
        )

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        if value is not None:
            VersionPolicy(value)
        return value


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TLSERVE_", env_nested_delimiter="__", extra="forbid", use_attribute_docstrings=True
    )

    repository: str = "models"
    """Model repository root: REPO/NAME/VERSION/ as `tlserve export` writes it; a directory, or a
    bucket URL (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, any fsspec URL) followed the same way, each
    new version downloaded into ``repository_cache_dir`` and checked before it is loaded."""
    repository_cache_dir: Path | None = None
    """Where versions from a bucket are downloaded to be loaded (only those served, deleted once
    unloaded); unset, a temporary directory removed at exit. One server per directory: a server
    clears the downloads it finds there before its first one. Unused for a local repository."""
    host: str = "0.0.0.0"
    """Address to bind every port to (gRPC, REST, metrics, health)."""
    grpc_port: int = Field(8500, ge=0, le=65535)
    """gRPC port (TF Serving API, Open Inference Protocol, native API, health, reflection); 0 picks a
    free port."""
    http_port: int | None = Field(8501, ge=0, le=65535)
    """REST port (TF Serving's REST API and the Open Inference Protocol's HTTP API); 0 picks a free
    port; off disables it."""
    metrics_port: int | None = Field(8502, ge=0, le=65535)
    """Prometheus /metrics port; 0 picks a free port; off disables it."""
    ports_file: Path | None = None
    """Once its ports are bound and the repository first scanned, the server writes them here as JSON
    (``{"grpc": 8500, "http": 8501, "metrics": 8502, "health": null, "pid": 7}``, replaced
    atomically, removed at a clean stop; one server per file), and ``python -m
    tlserve.service.healthcheck`` probes the port it names: the images set
    ``TLSERVE_PORTS_FILE=/tmp/tlserve-ports.json`` so that their HEALTHCHECK follows ``--grpc-port``;
    empty or off: none."""

    backend: Backend = "onnxruntime"
    """Default runtime. TensorFlow is imported only if a model uses the "tensorflow" backend."""
    providers: list[str] = Field(default_factory=lambda: [repo.TENSORRT, repo.CUDA, repo.CPU])
    """onnxruntime execution providers in priority order; those not installed are skipped (and the
    providers really obtained are logged and reported by ListModels). Aliases: tensorrt, cuda, cpu."""
    precision: Precision = "auto"
    """Which ONNX artifact: auto = fp16 on a GPU provider, int8 on CPU when the manifest recommends
    it, fp32 otherwise."""
    tensorrt_cache_dir: Path | None = None
    """Where the TensorRT provider keeps built engines and timing caches (engines are specific to the
    model, onnxruntime, TensorRT and GPU); unset, every load builds its engines again."""
    intra_op_threads: int = Field(0, ge=0)
    """Threads one onnxruntime/TensorFlow op may use; 0 = the runtime's default (one per core)."""
    inter_op_threads: int = Field(0, ge=0)
    """Threads for independent ops; 0 = the runtime's default."""

    batching: bool = True
    """Dynamic batching; off, every request runs on its own (still one at a time per model)."""
    max_batch_size: int = Field(32, ge=1)
    """Most images in one request; larger requests get INVALID_ARGUMENT."""
    dynamic_batch_size: int = Field(8, ge=1)
    """Most images the batcher merges from several requests into one backend call (a single request
    with more, up to ``max_batch_size``, runs alone); the server warms up at this size. 8 suits CPUs:
    MobileNetV2 on onnxruntime serves within the noise of batch 32's throughput at less than half its
    memory (228 vs 482 MB at start, docs/performance.md); GPUs want more (the gpu overlay sets 32)."""
    max_batch_delay_s: float = Field(0.0, ge=0)
    """How long a batch may wait for more requests once the model is free. 0 (default) adds no
    latency: a batch takes whatever queued while the previous one computed, which under load fills
    batches by itself; > 0 trades that much latency for fuller batches at moderate load."""
    max_queue_size: int = Field(256, ge=1)
    """Requests waiting per model version beyond which new ones get RESOURCE_EXHAUSTED at once."""

    version_policy: str = "latest"
    """Default version policy: latest, latest:N, all, versions:A,B,..."""
    poll_interval_s: float = Field(2.0, gt=0)
    """How often the repository is scanned for new, removed or changed versions."""
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    """Per-model overrides (backend, precision, version_policy, version_labels, unknown_*, capture_*)."""

    capture_dir: Path | None = None
    """Hard-example capture (docs/loop.md): the images a trigger below picks are written, after they
    were answered and off the request path, to DIR/MODEL/PREDICTED_LABEL/REQUEST_ID.EXT (the bytes
    sent; pixel tensors as PNG), one line each in DIR/MODEL/captures.jsonl. DIR/MODEL is then a
    folder `tlserve train` reads: relabelling is moving files between its class folders. A full or
    failing disk never fails a request (counted in tlserve_captures_total). Unset: off."""
    capture_sample: float = Field(0.0, ge=0.0, le=1.0)
    """Share of all images captured at random (0.01: one in a hundred)."""
    capture_below: float | None = Field(None, ge=0.0, le=1.0)
    """Capture every image whose top calibrated score is below this (the model was unsure)."""
    capture_novelty_above: float | None = Field(None, gt=0.0)
    """Capture every image whose novelty is above this (1.0: farther from every class than 95 % of
    that class's training images); needs reference statistics."""
    capture_max_bytes: int = Field(1024 * 1024 * 1024, ge=1)
    """Most bytes under ``capture_dir`` (files already there counted, re-counted every 30 s once
    reached); beyond it images are not captured."""
    capture_max_files: int = Field(10_000, ge=1)
    """Most images under ``capture_dir`` (as ``capture_max_bytes``)."""

    allowed_image_formats: list[str] = Field(default_factory=lambda: list(repo.IMAGE_FORMATS))
    """Encoded image formats accepted: by default every one the exported ``predict_images``
    signature decodes (JPEG, PNG, BMP, GIF), each decoded as it decodes it; list fewer to narrow
    that (images of the others are refused, naming this setting)."""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Larger images are rejected before decoding (decompression bombs)."""
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest gRPC message received or sent, and largest REST body."""
    jpeg_draft: int = Field(0, ge=0, le=64)
    """Fast JPEG path, off by default: N > 0 decodes a JPEG over N times the model's input size at a
    reduced DCT scale keeping at least N times that size. At 4, a 12-megapixel photo for a 224 px
    model takes 0.25-0.3 of the full decode's time with pixels within the JPEG tolerance on
    photo-like images; but scaled decoding averages where the exported signature's resize samples,
    so on fine detail (noise, thin stripes) pixels differ far more (docs/performance.md)."""
    decode_threads: int = Field(0, ge=0)
    """Threads decoding encoded images, for all models together; 0 = one per CPU."""
    max_decode_queue: int = Field(256, ge=1)
    """Requests decoding images or waiting for a decode thread, server-wide, beyond which new ones
    get RESOURCE_EXHAUSTED at once (those whose deadline the wait would not fit are refused too)."""
    compute_threads: int = Field(4, ge=1)
    """Threads running backend calls, for all model versions together. Each version's batcher has
    one call in flight at a time, so more threads than versions serving at once add nothing; one
    call spreads over ``intra_op_threads`` of its own."""
    max_connection_age_s: float | None = Field(None, gt=0)
    """Close each client connection after this long (gRPC GOAWAY; calls in flight finish): clients
    reconnect, and behind a Kubernetes Service that spreads them over new pods. Unset: never."""
    max_connection_age_grace_s: float = Field(30.0, ge=0)
    """How long calls in flight on an aged connection may still take."""
    keepalive_time_s: float | None = Field(None, gt=0)
    """Send HTTP/2 keepalive pings this often on idle connections (detects dead peers). Unset: off."""
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    """Largest encoded image accepted, in bytes."""
    max_request_pixels: int = Field(100_000_000, ge=1)
    """Pixels all images of one request may declare together (checked from their headers before any
    is decoded): bounds the CPU one request can cost."""
    max_jpeg_scans: int = Field(100, ge=1)
    """Most scans a JPEG may have, counted from its bytes before decoding: each scan of a progressive
    JPEG makes the decoder pass over the whole image again, so a small file of thousands of tiny
    scans costs seconds (a scan bomb). A progressive JPEG from libjpeg has 10 (6 grey), a baseline 1."""
    max_gif_frames: int = Field(gif.MAX_FRAMES, ge=1)
    """Most frames a GIF may have: the exported signature's canvas is as large as the GIF's largest
    frame, so every frame is read before decoding, and a file of tiny frames would cost that walk a
    Python step per 15 bytes (1.7 s for 20 MiB). Stopping at the limit instead would change the
    canvas, so a GIF of more frames is refused."""
    max_metadata_bytes: int = Field(16 * 1024, ge=1024)
    """Largest gRPC metadata (headers) a call may carry; above it the call is refused."""
    max_inflight_request_bytes: int = Field(2048 * 1024 * 1024, ge=1024)
    """Request messages (gRPC) and bodies (REST) the server holds at once, in bytes (default: 32
    times the default ``max_message_bytes``). A call reserves ``max_message_bytes`` (REST: its
    Content-Length) while its message is read, then keeps what it really holds (a JSON body: its
    bytes plus 32 per JSON value) until it is answered; calls wait for room, unread, in a 64 KiB
    window. The gRPC messages being read from one client host reserve at most a quarter of it at
    once (its other calls wait, holding nothing). Memory for requests stays about 2-3 times this. At
    least ``max_message_bytes``."""
    body_timeout_s: float = Field(30.0, gt=0)
    """How long a request message (gRPC) or body (REST) may take to arrive once the server starts
    reading it, waiting for room in ``max_inflight_request_bytes`` included: gRPC answers
    DEADLINE_EXCEEDED (RESOURCE_EXHAUSTED if it never got room), REST 408. Raise it for large
    messages over slow links (64 MiB at 20 Mbit/s take 27 s)."""
    max_concurrent_streams: int = Field(100, ge=1)
    """gRPC calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS):
    gRPC clients queue calls past it; streams opened past it anyway are refused (REFUSED_STREAM)."""
    max_concurrent_calls: int = Field(1000, ge=1)
    """gRPC calls in progress at once over all connections, health checks included; more get
    RESOURCE_EXHAUSTED at once."""
    max_health_watches: int = Field(100, ge=1)
    """grpc.health.v1 Watch streams open at once (they need no token and last until the client
    leaves); more get RESOURCE_EXHAUSTED. Kubernetes probes use Check, not Watch."""
    stream_window_bytes: int = Field(64 * 1024, ge=16 * 1024, le=16 * 1024 * 1024)
    """HTTP/2 flow-control window of a gRPC call that the server is not reading yet: what a client
    can make the server buffer on a call before the call is authenticated and has room in
    ``max_inflight_request_bytes``. A message being read gets a window of its size (bandwidth-delay
    probing, which would grow every window to megabytes, is off)."""
    max_grpc_connections: int = Field(1000, ge=1)
    """Open client connections on the gRPC port; past it new ones are closed at once."""
    max_http_connections: int = Field(1000, ge=1)
    """Open connections on the REST port; past it a new one gets 503 and is closed. With
    ``max_grpc_connections`` it keeps file descriptors for the other port: the server raises its
    soft open-file limit to fit both (plus 256 of its own) when the hard limit allows."""
    http_keepalive_timeout_s: float = Field(75.0, gt=0)
    """A REST connection with no request in progress is closed after this long, counted from its
    last response or, for a new connection, from its start: also the time a client has to send a
    request's headers. Keep it above the idle timeout of a proxy in front (nginx: 60 s)."""
    max_decompression_ratio: float = Field(100.0, ge=1)
    """A REST body sent compressed (Content-Encoding gzip, deflate, br) may grow this many times
    (beyond its first MiB) when decompressed; more is 413 (a decompression bomb)."""

    tls_cert_file: Path | None = None
    """PEM certificate chain of the server: set with ``tls_key_file`` to serve gRPC and REST over
    TLS. Unset: plaintext (put the server behind a mesh or ingress that terminates TLS)."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: set to require client certificates signed by it (mutual TLS)."""
    auth_tokens_file: Path | None = None
    """File of bearer tokens, one per line (``#`` comments and blank lines ignored): every call but
    health checks must carry ``authorization: Bearer TOKEN``. Re-read when the file changes, so a
    Kubernetes Secret can rotate tokens without a restart."""
    auth_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Bearer tokens given directly (``TLSERVE_AUTH_TOKENS=tok1,tok2``), in addition to the file's."""
    health_port: int | None = Field(None, ge=0, le=65535)
    """A plaintext port answering only grpc.health.v1, for Kubernetes probes (which cannot do TLS)
    when the gRPC port uses TLS; 0 picks one. Unset: health is only on the gRPC port."""

    shutdown_grace_s: float = Field(10.0, ge=0)
    """On SIGTERM/SIGINT: how long in-flight calls may take to finish."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """The least severe log lines written."""
    log_format: Literal["plain", "json"] = "plain"
    """plain: one human-readable line per event; json: one JSON object per line."""
    access_log: bool = False
    """One INFO line per call (method, model, version, status, duration)."""

    @field_validator("repository", mode="before")
    @classmethod
    def _repository(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                storage.location(value)  # NOTE: credentials in a URL, "s3:/x": refused here, once
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return str(value) if isinstance(value, Path) else value

    @field_validator("*", mode="before")
    @classmethod
    def _paths_are_local(cls, value: Any, info: ValidationInfo) -> Any:
        """A URL given for a setting that takes a path is refused, never made a local path."""
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        is_path = Path in (annotation, *get_args(annotation))
        if is_path and isinstance(value, str) and (refused := storage.not_a_path(value)):
            raise ValueError(refused)
        return value

    @property
    def location(self) -> Path | storage.Remote:
        """The repository: a local directory, or a bucket (``storage.Remote``) for a URL."""
        return storage.location(self.repository)

    @field_validator("http_port", "metrics_port", "health_port", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        """``off`` (a flag, TLSERVE_HTTP_PORT=off, a TOML file, which has no null) is no port."""
        return None if isinstance(value, str) and value.strip().lower() == "off" else value

    @field_validator("ports_file", mode="before")
    @classmethod
    def _no_file(cls, value: Any) -> Any:
        """An empty value (``docker run -e TLSERVE_PORTS_FILE=``, the image's setting undone) or
        ``off`` is no file."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "off") else value

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        VersionPolicy(value)
        return value

    @field_validator("providers")
    @classmethod
    def _providers(cls, value: list[str]) -> list[str]:
        return [PROVIDER_ALIASES.get(p.lower(), p) for p in value]

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        if isinstance(value, str):  # TLSERVE_AUTH_TOKENS=tok1,tok2
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @model_validator(mode="after")
    def _tls(self) -> ServerSettings:
        if _PARTIAL.get():  # NOTE: the environment alone (load_settings); checked once merged
            return self
        if "auth_tokens" in self.model_fields_set and not self.auth_tokens:  # NOTE: fail closed
            raise ValueError("auth_tokens is set but holds no token (an empty TLSERVE_AUTH_TOKENS would "
                             "otherwise turn authentication off)")  # fmt: skip
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if self.max_inflight_request_bytes < self.max_message_bytes:
            raise ValueError(f"max_inflight_request_bytes ({self.max_inflight_request_bytes}) must be at "
                             f"least max_message_bytes ({self.max_message_bytes})")  # fmt: skip
        self._capture()
        return self

    def _capture(self) -> None:
        """A capture trigger without ``capture_dir``, or ``capture_dir`` with no trigger, is a mistake."""
        models = [self.for_model(name) for name in self.models]
        triggered = self.for_model("").captures or any(m.captures for m in models)
        if self.capture_dir is not None and not triggered:
            raise ValueError("capture_dir is set but nothing triggers a capture: set capture_sample, "
                             "capture_below or capture_novelty_above (server-wide or per model)")  # fmt: skip
        if self.capture_dir is None and triggered:
            raise ValueError("a capture trigger (capture_sample, capture_below, capture_novelty_above) "
                             "is set but capture_dir is not: say where captured images go")  # fmt: skip

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @field_validator("allowed_image_formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        formats = [f.upper().replace("JPG", "JPEG") for f in value]
        unknown = [f for f in formats if f not in repo.IMAGE_FORMATS]
        if unknown or not formats:
            known = ", ".join(repo.IMAGE_FORMATS)
            raise ValueError(f"allowed_image_formats takes one or more of {known} (what the exported "
                             f"predict_images signature decodes); got {value}")  # fmt: skip
        return formats

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings

    def for_model(self, name: str) -> ModelSettings:
        """This model's settings with server-wide defaults filled in."""
        own = self.models.get(name, ModelSettings())
        return ModelSettings(
            backend=own.backend or self.backend,
            precision=own.precision or self.precision,
            version_policy=own.version_policy or self.version_policy,
            version_labels=own.version_labels,
            unknown_below=own.unknown_below,
            unknown_novelty_above=own.unknown_novelty_above,
            capture_sample=self.capture_sample if own.capture_sample is None else own.capture_sample,
            capture_below=self.capture_below if own.capture_below is None else own.capture_below,
            capture_novelty_above=own.capture_novelty_above
            if own.capture_novelty_above is not None
            else self.capture_novelty_above,
        )

    def public(self) -> dict[str, Any]:
        """What to log at start (JSON-friendly; no credentials in a repository URL)."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        data["repository"] = str(self.location)
        return data


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a JSON or TOML file; ValueError says what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: "
                         f"{exc}") from exc  # fmt: skip
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold an object of settings")
    return data


def _deep_merge(base: Any, top: Any) -> Any:
    """``top`` over ``base``, key by key where both are objects; a value of the wrong kind in
    ``base`` (a model's section that is not an object) is kept, for validation to name it."""
    if not isinstance(top, dict):
        return top
    if not isinstance(base, dict):
        return base if base is not None else top
    return {**base, **{k: _deep_merge(base.get(k), v) if k in base else v for k, v in top.items()}}


def load_settings(config: Path | None = None, **overrides: Any) -> ServerSettings:
    """Defaults < config file < environment < ``overrides`` (flags that were given). Raises
    pydantic.ValidationError or ValueError naming the bad setting."""
    config = config or (Path(os.environ["TLSERVE_CONFIG"]) if os.environ.get("TLSERVE_CONFIG") else None)
    file_values = read_config_file(config) if config else {}
    unknown = sorted(set(file_values) - set(ServerSettings.model_fields))
    if unknown:
        raise ValueError(f"unknown setting(s) in {config}: {', '.join(unknown)}")
    token = _PARTIAL.set(True)
    try:
        from_env = ServerSettings()  # environment over defaults
    finally:
        _PARTIAL.reset(token)
    env_values = {k: getattr(from_env, k) for k in from_env.model_fields_set}
    if "models" in env_values and isinstance(file_values.get("models"), dict):
        # NOTE: TLSERVE_MODELS__NAME__KEY sets one key of the file's models.NAME, not all of it
        env_models = {name: own.model_dump(exclude_unset=True) for name, own in from_env.models.items()}
        env_values["models"] = _deep_merge(file_values["models"], env_models)
    merged = {**file_values, **env_values, **overrides}
    return ServerSettings.model_validate(merged)
