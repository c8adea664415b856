"""The decoder: its own queue, the shared deadline estimate, decoding off the event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.service.images import encoded
from tlserve.service.decoding import Decoder, decode_wait
from tlserve.service.errors import InvalidArgument, ResourceExhausted
from tlserve.service.settings import ServerSettings


def test_decode_wait_is_zero_while_a_decode_thread_is_free() -> None:
    assert decode_wait(0, 2, 0.45) == 0.0 and decode_wait(1, 2, 0.45) == 0.0  # slow history, idle now
    assert decode_wait(2, 2, 0.1) == pytest.approx(0.2)  # both busy: one to finish, then its own
    assert decode_wait(5, 2, 0.1) == pytest.approx(0.3)
    assert decode_wait(9, 2, None) == 0.0  # nothing measured yet


def test_the_decoder_admits_by_its_own_queue_and_the_deadline() -> None:
    decoder = Decoder(ServerSettings(max_decode_queue=4, decode_threads=1, max_queue_size=1))
    image = encoded("red")

    async def main() -> None:
        assert (await decoder.decode([image, image], 8, 8)).shape == (2, 8, 8, 3)
        with pytest.raises(InvalidArgument, match="image 1: "):
            await decoder.decode([image, b"junk"], 8, 8)
        assert decoder.pending == 0 and decoder.recent.seconds is not None
        decoder.pending = 4  # as if four requests were decoding or waiting: max_queue_size is not it
        with pytest.raises(ResourceExhausted, match="setting max_decode_queue"):
            await decoder.decode([image], 8, 8)
        decoder.pending, decoder.recent.seconds = 3, 1.0  # 3 ahead of one thread, 1 s each
        with pytest.raises(ResourceExhausted, match="remaining deadline of"):
            await decoder.decode([image], 8, 8, time.monotonic() + 0.5)
        decoder.pending = 0
        assert (await decoder.decode([image], 8, 8, time.monotonic() + 0.5)).shape == (1, 8, 8, 3)

    try:
        asyncio.run(main())
    finally:
        decoder.close()
