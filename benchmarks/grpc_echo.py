"""A bare grpc.aio server answering every call to /bench.Echo/Echo with an empty message: the floor a
Python gRPC server cannot go below on this machine, for the same payload. Prints its port.

    python benchmarks/grpc_echo.py

The server is tlserve.service.bench.echo (``python -m tlserve.service.bench.echo``), which the
benchmarks start themselves.
"""

from __future__ import annotations

import asyncio

from tlserve.service.bench.echo import serve

if __name__ == "__main__":
    asyncio.run(serve())
