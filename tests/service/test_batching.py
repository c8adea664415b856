"""The batcher with a fake backend function that records the batches it is given."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tlserve.service.batching import Batcher
from tlserve.service.errors import DeadlineExceeded, ResourceExhausted, Unavailable


class Recorder:
    """predict(): returns each row's first pixel value as its 'probability'; records batch sizes."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        self.batches.append(len(pixels))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("backend exploded")
        return pixels.reshape(len(pixels), -1)[:, :1].copy()


def rows(*values: float) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(-1, 1, 1, 1)


def make(recorder: Recorder, **kw: object) -> Batcher:
    options = {"enabled": True, "max_batch_size": 8, "max_batch_delay_s": 0.05, "max_queue_size": 100, **kw}
    return Batcher(recorder, ThreadPoolExecutor(1), **options)  # type: ignore[arg-type]


def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    recorder = Recorder()

    async def main() -> list[np.ndarray]:
        batcher = make(recorder)
        return await asyncio.gather(*(batcher.submit(rows(i, i + 0.5)) for i in range(4)))

    results = asyncio.run(main())
    assert recorder.batches == [8]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result[:, 0], [i, i + 0.5])


def test_batches_never_exceed_the_maximum() -> None:
    recorder = Recorder()

    async def main() -> None:
        batcher = make(recorder, max_batch_size=4)
        await asyncio.gather(*(batcher.submit(rows(i, i, i)) for i in range(5)))

    asyncio.run(main())
    assert max(recorder.batches) <= 4 and sum(recorder.batches) == 15


def test_batching_off_runs_each_request_alone() -> None:
    recorder = Recorder()

    async def main() -> None:
        batcher = make(recorder, enabled=False)
        await asyncio.gather(*(batcher.submit(rows(i)) for i in range(5)))

    asyncio.run(main())
    assert recorder.batches == [1, 1, 1, 1, 1]


def test_a_full_queue_rejects_at_once() -> None:
    recorder = Recorder()
    recorder.gate.clear()  # the backend blocks: requests pile up

    async def main() -> list[object]:
        batcher = make(recorder, enabled=False, max_queue_size=2)
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        await asyncio.sleep(0.05)  # taken by the worker, blocked in the backend
        queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        # NOTE: "at once" without a clock: the backend is still blocked, so a submit that waited for
        # the queue would not return before the gate opens below
        with pytest.raises(ResourceExhausted, match="queue of this model is full"):
            await batcher.submit(rows(3))
        assert not recorder.gate.is_set()
        recorder.gate.set()
        return list(await asyncio.gather(first, *queued))

    done = asyncio.run(main())
    assert len(done) == 3


def test_expired_requests_are_dropped_before_compute() -> None:
    recorder = Recorder()
    recorder.gate.clear()

    async def main() -> None:
        batcher = make(recorder, enabled=False)
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(batcher.submit(rows(1), deadline=time.monotonic() + 0.01))
        await asyncio.sleep(0.05)  # its deadline passes while it waits
        recorder.gate.set()
        await first
        with pytest.raises(DeadlineExceeded):
            await late

    asyncio.run(main())
    assert recorder.batches == [1]  # the expired request never reached the backend


def test_cancelled_requests_do_not_take_a_batch_slot() -> None:
    recorder = Recorder()
    recorder.gate.clear()

    async def main() -> None:
        batcher = make(recorder, enabled=False)
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(rows(1)))
        await asyncio.sleep(0.01)
        gone.cancel()
        recorder.gate.set()
        await first

    asyncio.run(main())
    assert recorder.batches == [1]


def test_a_failing_batch_fails_every_waiter() -> None:
    recorder = Recorder(fail=True)

    async def main() -> list[object]:
        batcher = make(recorder)
        return await asyncio.gather(*(batcher.submit(rows(i)) for i in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert recorder.batches == [3]
    assert all(isinstance(r, RuntimeError) for r in results)


def test_close_finishes_queued_work_then_refuses() -> None:
    recorder = Recorder(delay_s=0.05)

    async def main() -> list[np.ndarray]:
        batcher = make(recorder, enabled=False)
        pending = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(3)]
        await asyncio.sleep(0)
        await batcher.close()
        with pytest.raises(Unavailable):
            await batcher.submit(rows(9))
        return [p.result() for p in pending]

    assert len(asyncio.run(main())) == 3


def test_abandoned_requests_stop_counting_against_the_queue() -> None:
    recorder = Recorder()
    recorder.gate.clear()

    async def main() -> None:
        batcher = make(recorder, enabled=False, max_queue_size=2)
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        await asyncio.sleep(0.05)
        ghosts = [asyncio.ensure_future(batcher.submit(rows(i))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        for ghost in ghosts:  # their clients gave up
            ghost.cancel()
        await asyncio.sleep(0)
        later = asyncio.ensure_future(batcher.submit(rows(3)))  # accepted: nobody is really waiting
        recorder.gate.set()
        await asyncio.gather(first, later)

    asyncio.run(main())
    assert recorder.batches == [1, 1]


def test_close_while_a_batch_is_being_collected() -> None:
    recorder = Recorder()

    async def main() -> np.ndarray:
        batcher = make(recorder, max_batch_delay_s=0.2)
        pending = asyncio.ensure_future(batcher.submit(rows(7)))
        await asyncio.sleep(0.02)  # the worker holds it, waiting for more
        await asyncio.wait_for(batcher.close(), 5)
        return await asyncio.wait_for(pending, 5)

    assert asyncio.run(main())[0, 0] == 7


def test_a_failure_outside_the_backend_fails_the_batch_not_the_worker() -> None:
    recorder = Recorder()

    async def main() -> np.ndarray:
        batcher = make(recorder)
        mismatched = [batcher.submit(rows(1)), batcher.submit(np.zeros((1, 2, 2, 1), np.float32))]
        results = await asyncio.gather(*mismatched, return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)  # np.concatenate refused the shapes
        return await batcher.submit(rows(5))  # the worker is still alive

    assert asyncio.run(main())[0, 0] == 5


@pytest.mark.parametrize("enabled", [True, False])
def test_a_deadline_shorter_than_the_queue_ahead_is_refused_at_once(enabled: bool) -> None:
    """Batches take 50 ms; 20 requests (4 batches of 4, or 20 one by one) are queued: a request
    with a 20 ms deadline cannot make it and is refused at once; one with 20 s is admitted."""
    recorder = Recorder(delay_s=0.05)

    async def main() -> None:
        batcher = make(recorder, enabled=enabled, max_batch_size=4, max_batch_delay_s=0)
        await batcher.submit(rows(0))  # one batch computed: the batcher now knows what one costs
        recorder.gate.clear()
        blocked = asyncio.ensure_future(batcher.submit(rows(1)))
        await asyncio.sleep(0.02)
        queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(20)]
        await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted, match="remaining deadline"):
            await batcher.submit(rows(99), deadline=time.monotonic() + 0.02)
        admitted = asyncio.ensure_future(batcher.submit(rows(7), deadline=time.monotonic() + 20))
        recorder.gate.set()
        await asyncio.gather(blocked, *queued)
        assert float((await admitted)[0, 0]) == 7.0
        await batcher.close()

    asyncio.run(main())
    assert sum(recorder.batches) == 1 + 1 + 20 + 1  # the refused request never reached the backend


def test_a_request_larger_than_the_merge_limit_runs_alone() -> None:
    recorder = Recorder(delay_s=0.02)

    async def main() -> None:
        batcher = make(recorder, max_batch_size=4, max_batch_delay_s=0)
        results = await asyncio.gather(batcher.submit(rows(1, 2, 3, 4, 5, 6)), batcher.submit(rows(7)),
                                       batcher.submit(rows(8)))  # fmt: skip
        assert [r[:, 0].tolist() for r in results] == [[1, 2, 3, 4, 5, 6], [7], [8]]
        await batcher.close()

    asyncio.run(main())
    assert recorder.batches == [6, 2]


def test_the_wait_estimate_packs_batches_as_the_worker_does() -> None:
    """5-image requests with batches of 8: one request per backend call. A request admitted behind
    13 of them must not be one that then expires: it is answered or refused at once."""
    recorder = Recorder(delay_s=0.05)

    async def main() -> list[str]:
        batcher = make(recorder, max_batch_size=8, max_batch_delay_s=0)
        await batcher.submit(rows(*[0] * 5))  # the batcher learns what one call costs

        async def one() -> str:
            try:
                await batcher.submit(rows(*[1] * 5), deadline=time.monotonic() + 0.6)
            except ResourceExhausted:
                return "refused"
            except DeadlineExceeded:
                return "expired"
            return "ok"

        outcomes = await asyncio.gather(*(one() for _ in range(14)))
        await batcher.close()
        return list(outcomes)

    outcomes = asyncio.run(main())
    assert "expired" not in outcomes and "refused" in outcomes and "ok" in outcomes, outcomes


def test_a_released_backend_failure_leaves_the_batcher_working() -> None:
    """The transports ``release`` a failure; doing so once killed the batcher's own loop (a frame
    of its suspended coroutine is on the failure's traceback): the next submit hung forever."""
    from tlserve.service.errors import release

    recorder = Recorder(fail=True)

    async def main() -> np.ndarray:
        batcher = make(recorder, max_batch_delay_s=0.0)
        try:
            await asyncio.wait_for(batcher.submit(rows(1)), 5)
        except RuntimeError as exc:
            release(exc)
            assert exc.__traceback__ is None
        else:
            raise AssertionError("the backend did not fail")
        recorder.fail = False
        result = await asyncio.wait_for(batcher.submit(rows(2)), 5)
        await asyncio.wait_for(batcher.close(), 5)
        return result

    np.testing.assert_array_equal(asyncio.run(main())[:, 0], [2])


def test_close_waits_for_a_backend_call_whose_requests_all_gave_up() -> None:
    """A retiring version is unloaded right after close(): the backend call still running for a
    batch whose callers all left (deadline, cancel) must end first."""
    recorder = Recorder(delay_s=0.3)
    finished: list[float] = []
    real = recorder.__call__

    def predict(pixels: np.ndarray) -> np.ndarray:
        out = real(pixels)
        finished.append(time.monotonic())
        return out

    async def main() -> float:
        batcher = Batcher(predict, ThreadPoolExecutor(1), enabled=True, max_batch_size=8,
                          max_batch_delay_s=0, max_queue_size=100)  # fmt: skip
        call = asyncio.ensure_future(batcher.submit(rows(1)))
        await asyncio.sleep(0.05)  # the backend is computing
        call.cancel()
        await batcher.close()
        return time.monotonic()

    closed = asyncio.run(main())
    assert finished and finished[0] <= closed
