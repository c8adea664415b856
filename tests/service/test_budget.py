"""The request budget (tlserve/service/transport/budget.py): room taken and given back, first come
first served, nothing lost when a waiting call is cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.service.conftest import ServerProcess
from tests.service.h2raw import Connection
from tests.service.tiny import SIZE, publish
from tlserve.service.errors import ResourceExhausted
from tlserve.service.transport.budget import RequestBudget


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_shares_are_taken_resized_and_given_back() -> None:
    async def main() -> None:
        budget = RequestBudget(100)
        async with budget.hold() as a, budget.hold() as b:
            await a.resize(60)
            await b.resize(40)
            assert budget.used == 100
            await a.resize(10)  # the message turned out small
            assert budget.used == 50
        assert budget.used == 0

    run(main())


def test_a_share_that_could_never_fit_is_refused() -> None:
    async def main() -> None:
        budget = RequestBudget(100)
        async with budget.hold() as share:
            with pytest.raises(ResourceExhausted, match="max_inflight_request_bytes"):
                await share.resize(101)
        assert budget.used == 0

    run(main())


def test_waiting_calls_get_room_in_order_and_a_small_one_does_not_jump_the_queue() -> None:
    async def main() -> None:
        budget = RequestBudget(100)
        order: list[str] = []

        async def call(name: str, size: int, held_s: float) -> None:
            async with budget.hold() as share:
                await share.resize(size)
                order.append(name)
                await asyncio.sleep(held_s)

        first = asyncio.create_task(call("first", 90, 0.05))
        await asyncio.sleep(0)
        big = asyncio.create_task(call("big", 80, 0))
        await asyncio.sleep(0)
        small = asyncio.create_task(call("small", 5, 0))  # would fit now, but "big" waits first
        await asyncio.gather(first, big, small)
        assert order == ["first", "big", "small"] and budget.used == 0

    run(main())


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    async def main() -> None:
        budget = RequestBudget(100)
        async with budget.hold() as holder:
            await holder.resize(100)

            async def wait(size: int) -> None:
                async with budget.hold() as share:
                    await share.resize(size)

            waiting = asyncio.create_task(wait(50))
            behind = asyncio.create_task(wait(50))
            await asyncio.sleep(0)
            waiting.cancel()
            await asyncio.sleep(0)
            await holder.resize(0)
            await asyncio.wait_for(behind, 1)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert budget.used == 0

    run(main())


def test_a_call_that_holds_bytes_grows_only_if_there_is_room_now() -> None:
    async def main() -> None:
        budget = RequestBudget(100)
        async with budget.hold() as a, budget.hold() as b:
            await a.resize(60)
            await b.resize(30)
            assert a.grow_now(70) and budget.used == 100
            assert not b.grow_now(40) and b.size == 30  # would have to wait: refused instead
        assert budget.used == 0

    run(main())


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A budget of 4 messages of 1 MiB, so a quarter of it (one client host's reads) is one read."""
    repository = tmp_path_factory.mktemp("models")
    publish(repository, "colors", 1)
    env = {"TLSERVE_MAX_MESSAGE_BYTES": str(1 << 20), "TLSERVE_MAX_INFLIGHT_REQUEST_BYTES": str(4 << 20),
           "TLSERVE_BODY_TIMEOUT_S": "20"}  # fmt: skip
    process = ServerProcess(repository, env=env)
    with process.client() as client:
        client.wait_ready("colors")
    yield process
    assert process.stop() == 0, process.log


def _stall(server: ServerProcess, path: str, streams: int) -> Connection:
    """``streams`` calls to ``path`` from 127.0.0.2 that send a message's 5-byte prefix and no more."""
    connection = Connection(server.grpc_port, source="127.0.0.2")
    for _ in range(streams):
        connection.send(connection.open(path), b"\0" + (1000).to_bytes(4, "big"))
    connection.pump(0.5)
    time.sleep(0.5)  # NOTE: for the server to start reading them
    return connection


def test_stalled_messages_of_one_client_do_not_delay_others(small_budget: ServerProcess) -> None:
    pixels = np.zeros((1, SIZE, SIZE, 3), np.float32)
    with small_budget.client() as client:
        client.predict("colors", pixels)  # NOTE: the channel is set up before timing
        stalled = _stall(small_budget, "/tensorflow.serving.PredictionService/Predict", 8)
        try:
            start = time.monotonic()
            assert client.predict("colors", pixels)[0] == 1
            # NOTE: blocked behind the stalled reads it would wait the 20 s body timeout; the margin
            # is for a loaded machine (this is not a speed target)
            assert time.monotonic() - start < 10
            with ThreadPoolExecutor(12) as pool:  # more calls at once than the budget has reads
                versions = list(pool.map(lambda _: client.predict("colors", pixels)[0], range(24)))
            assert versions == [1] * 24
        finally:
            stalled.close()


def test_a_stalled_health_check_does_not_keep_a_probe_out(small_budget: ServerProcess) -> None:
    stalled = _stall(small_budget, "/grpc.health.v1.Health/Check", 2)
    try:
        with small_budget.client(timeout_s=1.0) as client:
            assert client.health() == "SERVING"
    finally:
        stalled.close()


def test_health_messages_that_are_malformed_or_too_large_are_refused(small_budget: ServerProcess) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{small_budget.grpc_port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        large = b"\x0a\x80\x80\x05" + b"a" * 81920  # a service name of 80 KiB
        for body, code in ((b"\xff" * 20, grpc.StatusCode.INVALID_ARGUMENT),
                           (large, grpc.StatusCode.RESOURCE_EXHAUSTED)):  # fmt: skip
            with pytest.raises(grpc.RpcError) as failure:
                check(body, timeout=5)
            assert failure.value.code() == code, failure.value


def test_a_reflection_stream_may_wait_between_its_messages(small_budget: ServerProcess) -> None:
    """Only a stream's first message must arrive within the side timeout (2 s)."""
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        time.sleep(2.5)
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    with grpc.insecure_channel(f"127.0.0.1:{small_budget.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(stub.ServerReflectionInfo(requests(), timeout=10))
    assert len(answers) == 2 and all(a.list_services_response.service for a in answers)
