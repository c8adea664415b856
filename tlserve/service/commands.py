"""``tlserve serve`` and ``tlserve predict``: argument parsing only; the work is imported lazily."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tlserve.errors import UsageError

# Flags of `tlserve serve`: (flag, setting, type, help). Flags left out keep the config file's,
# the environment's or the default value; the help shows the default.
SERVE_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--repository",
        "repository",
        Path,
        "model repository root (REPO/NAME/VERSION/, as tlserve export writes)",
    ),
    ("--host", "host", str, "address to bind"),
    (
        "--grpc-port",
        "grpc_port",
        int,
        "gRPC port: TF Serving API, native API, health, reflection; 0 = pick one",
    ),
    ("--http-port", "http_port", int, "REST port (TF Serving REST API); 0 = pick one"),
    ("--metrics-port", "metrics_port", int, "Prometheus /metrics port; 0 = pick one"),
    ("--backend", "backend", str, "default runtime: onnxruntime or tensorflow"),
    (
        "--providers",
        "providers",
        lambda s: s.split(","),
        "onnxruntime providers, best first (tensorrt,cuda,cpu)",
    ),
    ("--precision", "precision", str, "ONNX artifact: auto, fp32, fp16 or int8"),
    ("--intra-op-threads", "intra_op_threads", int, "threads per op; 0 = one per core"),
    ("--inter-op-threads", "inter_op_threads", int, "threads across ops; 0 = runtime default"),
    ("--version-policy", "version_policy", str, "latest, latest:N, all or versions:A,B"),
    ("--poll-interval-s", "poll_interval_s", float, "seconds between repository scans"),
    ("--max-batch-size", "max_batch_size", int, "most images in one request"),
    (
        "--dynamic-batch-size",
        "dynamic_batch_size",
        int,
        "most images merged from several requests into one call",
    ),
    ("--max-batch-delay-s", "max_batch_delay_s", float, "how long a batch waits for more requests"),
    ("--max-queue-size", "max_queue_size", int, "waiting requests per model before RESOURCE_EXHAUSTED"),
    ("--shutdown-grace-s", "shutdown_grace_s", float, "time in-flight calls get on SIGTERM"),
    (
        "--max-connection-age-s",
        "max_connection_age_s",
        float,
        "close client connections this old (spreads load)",
    ),
    ("--max-image-bytes", "max_image_bytes", int, "largest encoded image accepted"),
    ("--max-image-pixels", "max_image_pixels", int, "largest image (from its header, before decoding)"),
    ("--max-request-pixels", "max_request_pixels", int, "pixels all images of one request may declare"),
    ("--max-jpeg-scans", "max_jpeg_scans", int, "most scans in a JPEG (progressive scan bombs)"),
    ("--max-gif-frames", "max_gif_frames", int, "most frames in a GIF (all are read for its canvas)"),
    ("--tls-cert-file", "tls_cert_file", Path, "PEM certificate chain: serve gRPC and REST over TLS"),
    ("--tls-key-file", "tls_key_file", Path, "PEM private key of --tls-cert-file"),
    ("--tls-client-ca-file", "tls_client_ca_file", Path, "PEM CA: require client certificates (mTLS)"),
    (
        "--auth-tokens-file",
        "auth_tokens_file",
        Path,
        "bearer tokens, one per line, required on every call but health (or TLSERVE_AUTH_TOKENS)",
    ),
    ("--health-port", "health_port", int, "plaintext health-only gRPC port for probes when TLS is on"),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("--log-format", "log_format", str, "plain or json (one JSON object per line)"),
]


def add_serve(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    from tlserve.service.settings import ServerSettings

    p = sub.add_parser(
        "serve",
        help="serve a model repository: gRPC and REST (TF Serving API, KServe v2, native), metrics",
        formatter_class=formatter,
        description=(
            "Serve every model in REPO. On the gRPC port: TensorFlow Serving's PredictionService and\n"
            "ModelService (Predict by signature serving_default or predict_images, Classify,\n"
            "GetModelMetadata, GetModelStatus), the Open Inference Protocol (KServe v2:\n"
            "inference.GRPCInferenceService), the native tlserve.v1.Inference API (Classify, ListModels),\n"
            "grpc.health.v1 (one service per model) and server reflection. On the HTTP port: TF Serving's\n"
            "REST API (/v1/models/...) and the OIP's (/v2/...). Prometheus metrics on a third port.\n"
            "New versions published into REPO are loaded, warmed up and swapped in while serving; a\n"
            "version that fails to load leaves the previous one serving.\n\n"
            "Settings: flags > TLSERVE_* environment > --config file > defaults, e.g.\n"
            "  TLSERVE_MAX_BATCH_SIZE=16  TLSERVE_MODELS__FLOWERS__BACKEND=tensorflow\n\n"
            "examples:\n"
            "  tlserve serve --repository models\n"
            "  tlserve serve --repository models --grpc-port 0 --metrics-port 0 --version-policy latest:2\n"
            "  grpcurl -plaintext localhost:8500 list\n"
            "  TLSERVE_AUTH_TOKENS=$(cat token) tlserve serve --repository models \\\n"
            "      --tls-cert-file tls.crt --tls-key-file tls.key --health-port 8503\n\n"
            "Security (limits, TLS, mTLS, tokens, threat model): docs/security.md"
        ),
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="settings file, JSON or TOML (TLSERVE_CONFIG)")
    p.add_argument("--no-batching", dest="batching", action="store_false", default=argparse.SUPPRESS,
                   help="run every request on its own (dynamic batching is on by default)")  # fmt: skip
    p.add_argument("--access-log", dest="access_log", action="store_true", default=argparse.SUPPRESS,
                   help="log one line per call (off by default)")  # fmt: skip
    fields = ServerSettings.model_fields
    for flag, setting, kind, text in SERVE_FLAGS:
        default = fields[setting].get_default(call_default_factory=True)
        default = ",".join(default) if isinstance(default, list) else default
        default = "unset" if default is None else default
        metavar = "REPO" if setting == "repository" else setting.split("_")[-1].upper()
        p.add_argument(flag, dest=setting, type=kind, default=argparse.SUPPRESS, metavar=metavar,
                       help=f"{text} (default: {default})")  # fmt: skip
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import pydantic

    from tlserve.service.settings import ServerSettings, load_settings

    overrides = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    try:
        settings = load_settings(args.config, **overrides)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"invalid settings: {problems}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not settings.repository.is_dir():
        raise UsageError(f"model repository {settings.repository} is not a directory (export a model into it "
                         "with: tlserve export RUN_DIR --repository DIR --name NAME)")  # fmt: skip
    from tlserve.service.transport.server import auth_tokens, serve, tls_credentials

    try:  # NOTE: bad TLS files or tokens are usage errors, said before anything starts
        auth_tokens(settings)
        tls_credentials(settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        serve(settings)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    return 0


def add_predict(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a running server",
        formatter_class=formatter,
        description=(
            "Send IMAGE files to a tlserve server and print the top labels of each.\n\n"
            "examples:\n"
            "  tlserve predict rose.jpg tulip.png --model flowers\n"
            "  tlserve predict *.jpg --model flowers --api tfs --server 10.0.0.5:8500 --top-k 3"
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG, PNG, BMP or GIF files")
    p.add_argument("--model", required=True, help="model name in the server's repository")
    p.add_argument("--server", default="localhost:8500", metavar="HOST:PORT", help="gRPC address")
    p.add_argument("--api", choices=["native", "tfs"], default="native",
                   help="native: tlserve.v1 Classify; tfs: TF Serving Predict (predict_images)")  # fmt: skip
    p.add_argument("--version", type=int, default=0, help="model version; 0 = the newest serving")
    p.add_argument("--top-k", type=int, default=3, help="labels to print per image")
    p.add_argument("--timeout-s", type=float, default=10.0, help="deadline of the call")
    p.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS",
        help="wait up to this long for the server to start and the model to be SERVING; 0 = do not wait",
    )  # fmt: skip
    add_connection_flags(p)
    p.set_defaults(handler=_run_predict)


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    """--tls-ca/--tls-cert/--tls-key/--token-file: how a client command reaches a secured server."""
    g = p.add_argument_group("security (servers with TLS or bearer tokens; docs/security.md)")
    g.add_argument("--tls", action="store_true", help="connect over TLS, verifying with the system's CAs")
    g.add_argument("--tls-ca", type=Path, metavar="FILE", help="PEM CA that signed the server's certificate "
                   "(implies --tls)")  # fmt: skip
    g.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM client certificate, for mutual TLS")
    g.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")
    g.add_argument("--tls-server-name", metavar="NAME", help="name to verify the server's certificate for")
    g.add_argument("--token-file", type=Path, metavar="FILE",
                   help="file holding a bearer token (else the TLSERVE_TOKEN variable)")  # fmt: skip


def connection(args: argparse.Namespace) -> tuple[Any, str | None]:
    """(Tls or None, token or None) from add_connection_flags' flags; UsageError when unreadable."""
    import os

    from tlserve.service.client import Tls

    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        try:
            tls = Tls.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    token = os.environ.get("TLSERVE_TOKEN") or None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read {args.token_file}: {exc.strerror or exc}") from None
    return tls, token


def _run_predict(args: argparse.Namespace) -> int:
    """One row per image answered; one error line per image refused, naming its file (exit 1)."""
    import sys
    import time

    import grpc

    from tlserve.errors import TlserveError
    from tlserve.service.client import Client, describe_rpc_error

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1; got {args.top_k}")
    if not args.wait >= 0:
        raise UsageError(f"--wait must be 0 or more seconds; got {args.wait}")
    images = []
    for path in args.images:
        try:
            images.append(path.read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    tls, token = connection(args)
    with Client(args.server, timeout_s=args.timeout_s, tls=tls, token=token) as client:
        try:
            if args.wait:
                try:
                    client.wait_ready(args.model, timeout_s=args.wait)
                except TimeoutError as exc:
                    client.health()  # NOTE: says why when the server cannot be reached at all
                    raise TlserveError(str(exc)) from None
            start = time.perf_counter()
            version, answers = client.classify_each(args.model, images, args.top_k, args.version, args.api)
        except grpc.RpcError as exc:
            raise TlserveError(describe_rpc_error(args.server, exc)) from None
        elapsed = (time.perf_counter() - start) * 1000
    shown = max(len(a.labels) for a in answers)
    width = max(len(str(p)) for p in args.images)
    if shown:
        if shown < args.top_k:
            print(f"note: --top-k {args.top_k}, but {args.model} has {shown} classes: showing {shown}")
        print(f"{'image':<{width}}  top {shown} (model {args.model} v{version}, {args.api} API, "
              f"{elapsed:.1f} ms)")  # fmt: skip
    for path, answer in zip(args.images, answers, strict=True):
        if answer.labels:
            print(f"{path!s:<{width}}  " + "  ".join(f"{x.label} {x.score:.3f}" for x in answer.labels))
    failed = [(path, a.error) for path, a in zip(args.images, answers, strict=True) if not a.labels]
    for path, error in failed:
        print(f"tlserve predict: failed: {path}: {error}", file=sys.stderr)
    return 1 if failed else 0


def add_bench(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "bench",
        help="load a running server and measure latency percentiles, throughput and errors",
        formatter_class=formatter,
        description=(
            "Send requests to a running server, as Triton's perf_analyzer does, and print latency\n"
            "percentiles (p50, p90, p99, p99.9), throughput (requests/s and images/s) and errors by gRPC\n"
            "status code. The warm-up is not counted; a progress line shows on a terminal (stderr).\n\n"
            "load:\n"
            "  closed loop  --concurrency N (default 1): N clients, each sending its next request as\n"
            "               soon as its last one is answered: the throughput with N requests in flight.\n"
            "  open loop    --rate R: R requests/s on a fixed schedule, answered or not. Latency runs from\n"
            "               the scheduled send time, so a server falling behind shows its queueing (no\n"
            "               coordinated omission); past its capacity, latency grows with the run.\n"
            "inputs (one request, built once, sent every time):\n"
            "  tensor  random float32 pixels at the model's input size (--api tfs or v2)\n"
            "  jpeg    a generated JPEG of that size, or --image FILE (every API; the server decodes it)\n"
            "--inprocess runs the same load through onnxruntime in this process (the served version's\n"
            "model.onnx from --repository) and prints the ratios server/in-process of p50 and throughput.\n\n"
            "exit codes: 0 measured (errors, if any, are in the table); 1 no request succeeded; 2 bad\n"
            "arguments, no server at --server, or no such model.\n\n"
            "examples:\n"
            "  tlserve bench --model flowers\n"
            "  tlserve bench --model flowers --api v2 --concurrency 16 --duration 30\n"
            "  tlserve bench --model flowers --api native --rate 200 --image rose.jpg\n"
            "  tlserve bench --model flowers --inprocess --repository models --json b.json --plot b.png"
        ),
    )
    p.add_argument("--model", required=True, help="model name in the server's repository")
    p.add_argument("--server", default="localhost:8500", metavar="HOST:PORT", help="gRPC address")
    p.add_argument("--api", choices=["native", "tfs", "v2"], default="tfs",
                   help="native: tlserve.v1 Classify; tfs: TF Serving Predict; v2: ModelInfer")  # fmt: skip
    p.add_argument("--input", choices=["tensor", "jpeg"],
                   help="request content (default: jpeg for native or --image, else tensor)")  # fmt: skip
    p.add_argument("--image", type=Path, metavar="FILE", help="send this image file (with --input jpeg)")
    p.add_argument("--batch-size", type=int, default=1, metavar="B", help="images per request")
    p.add_argument("--concurrency", type=int, metavar="N", help="closed loop: clients (default: 1)")
    p.add_argument("--rate", type=float, metavar="R", help="open loop: requests per second")
    p.add_argument("--duration", dest="duration_s", type=float, default=10.0, metavar="S",
                   help="seconds measured, after the warm-up")  # fmt: skip
    p.add_argument("--warmup", dest="warmup_s", type=float, default=2.0, metavar="S",
                   help="seconds of load before measuring")  # fmt: skip
    p.add_argument("--max-requests", type=int, default=1_000_000, metavar="N",
                   help="stop after this many measured requests, if --duration has not passed")  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=10.0, help="deadline of each call")
    p.add_argument("--version", type=int, default=0, help="model version; 0 = the newest serving")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the figures, settings and machine facts")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="latency histogram, CDF and over time")
    p.add_argument("--inprocess", action="store_true", help="also run onnxruntime in-process; print ratios")
    p.add_argument("--repository", type=Path, metavar="REPO", help="the server's repository (--inprocess)")
    add_connection_flags(p)
    p.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import sys

    from tlserve.service.bench import BenchOptions, run

    fields = BenchOptions.__dataclass_fields__
    tls, token = connection(args)
    options = {k: v for k, v in vars(args).items() if k in fields and k not in ("tls", "token")}
    return run(BenchOptions(**options, tls=tls, token=token), progress=sys.stderr)
