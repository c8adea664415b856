"""A bare grpc.aio server answering every call to /bench.Echo/Echo with an empty message: the floor a
Python gRPC server cannot go below on this machine, for the same payload. Prints its port.

    python benchmarks/grpc_echo.py
"""

from __future__ import annotations

import asyncio

import grpc
from grpc import aio


async def main() -> None:
    server = aio.server(options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
