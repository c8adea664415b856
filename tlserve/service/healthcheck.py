"""Exit 0 when a local tlserve answers SERVING on its gRPC health service, 1 otherwise.

For container HEALTHCHECKs and exec probes (Kubernetes' native gRPC probe needs no script):

    python -m tlserve.service.healthcheck [--port 8500] [--service NAME] [--timeout-s 3]

The port defaults to the one the server really bound, read from its ports file when
TLSERVE_PORTS_FILE names one (the images set it, so `docker run IMAGE --grpc-port 9000` is probed
on 9000): its health-only port if it has one, else its gRPC port. Without a ports file (none set,
not written yet, or not writable), the server's settings in the environment: TLSERVE_HEALTH_PORT
(the plaintext health-only port a TLS server opens for probes), else TLSERVE_GRPC_PORT, else 8500.
Health checks need no bearer token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default: see above")
    parser.add_argument("--service", default="", help='a model name, or "" for the whole server')
    parser.add_argument("--timeout-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.port is None:
        try:
            args.port = default_port()
        except (OSError, ValueError) as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            return 1
    with grpc.insecure_channel(f"{args.host}:{args.port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def default_port() -> int:
    ports_file = os.environ.get("TLSERVE_PORTS_FILE")
    if ports_file:
        try:
            ports = json.loads(Path(ports_file).read_text())
        except FileNotFoundError:
            ports = None  # NOTE: not yet written (starting), or not writable: the settings below
        except ValueError as exc:
            raise ValueError(f"ports file {ports_file} is not JSON: {exc}") from None
        if ports is not None:
            port = ports.get("health") or ports.get("grpc") if isinstance(ports, dict) else None
            if not isinstance(port, int):
                raise ValueError(f"ports file {ports_file} names no gRPC port: {ports!r:.200}")
            return port
    return int(os.environ.get("TLSERVE_HEALTH_PORT") or os.environ.get("TLSERVE_GRPC_PORT") or "8500")


if __name__ == "__main__":
    sys.exit(main())
