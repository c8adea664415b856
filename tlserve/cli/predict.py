"""``tlserve predict``: classify image files with a running server."""

from __future__ import annotations

import argparse
from typing import Any

from tlserve.cli.common import Formatter, local
from tlserve.errors import UsageError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a running server",
        formatter_class=Formatter,
        description=(
            "Send IMAGE files to a tlserve server and print the top labels of each.\n\n"
            "examples:\n"
            "  tlserve predict rose.jpg tulip.png --model flowers\n"
            "  tlserve predict *.jpg --model flowers --api tfs --server 10.0.0.5:8500 --top-k 3"
        ),
    )
    p.add_argument("images", nargs="+", type=local, metavar="IMAGE", help="JPEG, PNG, BMP or GIF files")
    p.add_argument("--model", required=True, help="model name in the server's repository")
    p.add_argument("--server", default="localhost:8500", metavar="HOST:PORT", help="gRPC address")
    p.add_argument("--api", choices=["native", "tfs"], default="native",
                   help="native: tlserve.v1 Classify; tfs: TF Serving Classify")  # fmt: skip
    p.add_argument("--version", type=int, default=0, help="model version; 0 = the newest serving")
    p.add_argument("--top-k", type=int, default=3, help="labels to print per image")
    p.add_argument("--timeout-s", type=float, default=10.0, help="deadline of the call")
    p.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS",
        help="wait up to this long for the server to start and the model to be SERVING; 0 = do not wait",
    )  # fmt: skip
    add_connection_flags(p)
    p.set_defaults(handler=run)


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    """--tls-ca/--tls-cert/--tls-key/--token-file: how a client command reaches a secured server."""
    g = p.add_argument_group("security (servers with TLS or bearer tokens; docs/security.md)")
    g.add_argument("--tls", action="store_true", help="connect over TLS, verifying with the system's CAs")
    g.add_argument("--tls-ca", type=local, metavar="FILE", help="PEM CA that signed the server's certificate "
                   "(implies --tls)")  # fmt: skip
    g.add_argument("--tls-cert", type=local, metavar="FILE", help="PEM client certificate, for mutual TLS")
    g.add_argument("--tls-key", type=local, metavar="FILE", help="PEM key of --tls-cert")
    g.add_argument("--tls-server-name", metavar="NAME", help="name to verify the server's certificate for")
    g.add_argument("--token-file", type=local, metavar="FILE",
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


def run(args: argparse.Namespace) -> int:
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
