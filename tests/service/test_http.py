"""What the REST APIs share (tlserve/service/transport/http.py): counting JSON values before parsing,
parsing a large body without freezing the event loop, JSON numbers as arrays."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from tlserve.service.errors import InvalidArgument
from tlserve.service.transport.budget import RequestBudget
from tlserve.service.transport.http import json_numbers, json_values, parse_json


@pytest.mark.parametrize(
    "value", [[], [1, 2, 3], {"a": [1, {"b": []}], "c": "x,y"}, [[[]]], 7, [[1.5, 2], [3, 4]]]
)
def test_json_values_is_an_upper_bound(value: object) -> None:
    def count(v: object) -> int:
        if isinstance(v, list):
            return 1 + sum(map(count, v))
        if isinstance(v, dict):
            return 1 + sum(map(count, v.values()))
        return 1

    assert json_values(json.dumps(value).encode()) >= count(value)


def test_too_many_values_are_refused_before_parsing_and_costs_are_held() -> None:
    async def main() -> None:
        budget = RequestBudget(1 << 30)
        async with budget.hold() as share:
            with pytest.raises(InvalidArgument, match="JSON values"):
                await parse_json(b"[" + b"0," * 1000 + b"0]", 100, share)
            parsed = await parse_json(b'{"instances": [1, 2, 3]}', 100, share)
            assert parsed == {"instances": [1, 2, 3]} and share.size == 32 * json_values(
                b'{"instances": [1, 2, 3]}'
            )

    asyncio.run(main())


def test_a_large_body_is_parsed_while_the_event_loop_keeps_running() -> None:
    data = b'{"instances": [' + b"1.5, 2," * 1_000_000 + b"3]}"  # 2 M numbers, 14 MB

    async def main() -> tuple[dict[str, object], float, int]:
        budget = RequestBudget(1 << 30)
        async with budget.hold() as share:
            parsing = asyncio.ensure_future(parse_json(data, 10**8, share))
            worst, ticks = 0.0, 0
            while not parsing.done():
                start = time.perf_counter()
                await asyncio.sleep(0.005)
                worst, ticks = max(worst, time.perf_counter() - start), ticks + 1
            return await parsing, worst, ticks

    parsed, worst, ticks = asyncio.run(main())
    instances = parsed["instances"]
    assert isinstance(instances, list) and len(instances) == 2_000_001 and instances[:2] == [1.5, 2]
    assert isinstance(instances[1], int)
    # inline, the loop would not tick at all; the bound on the worst gap is loose for loaded machines
    assert ticks > 5 and worst < 2.0, (ticks, worst)


def test_json_numbers_row_by_row_is_numpy_asarray() -> None:
    rows = np.arange(2 * 3 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 3)
    assert np.array_equal(json_numbers(rows.tolist(), "x"), rows)
    assert json_numbers([1, 2], "x").tolist() == [1.0, 2.0] and json_numbers([], "x").shape == (0,)
    for bad in ([[1, 2], [3]], [1, [2]], [{"a": 1}, {"a": 2}], [10**400, 1]):
        with pytest.raises(InvalidArgument, match=r"^x$"):
            json_numbers(bad, "x")


def test_json_numbers_flat_and_nested_give_identical_arrays() -> None:
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.float32)
    flat = json_numbers(image.ravel().tolist(), "x")
    nested = json_numbers(image.tolist(), "x")
    assert flat.dtype == nested.dtype == np.float32 and flat.shape == (60,) and nested.shape == (4, 5, 3)
    assert np.array_equal(flat, nested.ravel()) and np.array_equal(nested, image)
    for bad in ([[1, 2], 3], [[1, 2], [3, "a"]], [[[1]], [[1, 2]]]):
        with pytest.raises(InvalidArgument, match=r"^x$"):
            json_numbers(bad, "x")
