"""Exit 0 when a local tlserve answers SERVING on its gRPC health service, 1 otherwise.

For container HEALTHCHECKs and exec probes (Kubernetes' native gRPC probe needs no script):

    python -m tlserve.service.healthcheck [--port 8500] [--service NAME] [--timeout-s 3]

The port defaults to the server's own settings in the environment: TLSERVE_HEALTH_PORT (the
plaintext health-only port a TLS server opens for probes), else TLSERVE_GRPC_PORT, else 8500.
Health checks need no bearer token.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    default_port = os.environ.get("TLSERVE_HEALTH_PORT") or os.environ.get("TLSERVE_GRPC_PORT") or "8500"
    parser.add_argument("--port", type=int, default=int(default_port))
    parser.add_argument("--service", default="", help='a model name, or "" for the whole server')
    parser.add_argument("--timeout-s", type=float, default=3.0)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
