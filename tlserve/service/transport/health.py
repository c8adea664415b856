"""grpc.health.v1 with a cap on open Watch streams.

Health needs no token (probes carry none) and a Watch lasts until the client leaves, so without a cap
one client could hold any number of them (20,000 were all accepted). Check is not limited: it answers
at once.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2


class HealthServicer(health.aio.HealthServicer):
    def __init__(self, max_watches: int) -> None:
        super().__init__()
        self.max_watches = max_watches
        self.watching = 0

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> None:
        if self.watching >= self.max_watches:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.watching} health watches are open, the most allowed (setting "
                                "max_health_watches); use Check, or retry later")  # fmt: skip
        self.watching += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watching -= 1
