"""``tlserve bench``: load a running server and measure it."""

from __future__ import annotations

import argparse

from tlserve.cli.common import Formatter, local
from tlserve.cli.predict import add_connection_flags, connection


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="load a running server and measure latency percentiles, throughput and errors",
        formatter_class=Formatter,
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
    p.add_argument("--input", choices=["tensor", "uint8", "jpeg"],
                   help="request content: tensor (float32 pixels), uint8 (pixels, a quarter of the bytes), "
                   "jpeg (default: jpeg for native or --image, else tensor)")  # fmt: skip
    p.add_argument("--image", type=local, metavar="FILE", help="send this image file (with --input jpeg)")
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
    p.add_argument("--json", type=local, metavar="FILE", help="write the figures, settings and machine facts")
    p.add_argument("--plot", type=local, metavar="FILE.png", help="latency histogram, CDF and over time")
    p.add_argument("--inprocess", action="store_true", help="also run onnxruntime in-process; print ratios")
    p.add_argument("--repository", type=local, metavar="REPO", help="the server's repository (--inprocess)")
    add_connection_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from tlserve.service.bench import BenchOptions, run

    fields = BenchOptions.__dataclass_fields__
    tls, token = connection(args)
    options = {k: v for k, v in vars(args).items() if k in fields and k not in ("tls", "token")}
    return run(BenchOptions(**options, tls=tls, token=token), progress=sys.stderr)
