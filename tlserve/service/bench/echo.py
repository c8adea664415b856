"""A bare grpc.aio server answering every call to /bench.Echo/Echo with an empty message: the floor a
Python gRPC server cannot go below on this machine, for the same payload.

    python -m tlserve.service.bench.echo      (benchmarks/grpc_echo.py): serves, prints its port
    echo_floor_ms(payload, calls)             starts one in a child process and times a call to it
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
from grpc import aio

from tlserve.service.bench.load import p50_ms
from tlserve.service.client import channel

METHOD = "/bench.Echo/Echo"


async def serve() -> None:
    """Serve on 127.0.0.1 with a port the system picks; print the port, then wait for termination."""
    server = aio.server(options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def echo_floor_ms(payload: bytes, calls: int) -> float:
    """p50 of a call carrying ``payload`` to a bare Python gRPC server that does nothing."""
    echo = subprocess.Popen([sys.executable, "-m", __name__], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        with channel(f"127.0.0.1:{port}") as to_echo:
            call = to_echo.unary_unary(METHOD)
            return p50_ms(lambda: call(payload, timeout=30), calls)
    finally:
        echo.terminate()
        echo.wait()


if __name__ == "__main__":
    asyncio.run(serve())
