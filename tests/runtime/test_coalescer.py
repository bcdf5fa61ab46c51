"""The Coalescer behind batched writes: concurrent submits share one write, one write runs at a
time, results and failures reach exactly their own submitters, and no submitter is left hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from kannon.runtime.coalescer import Coalescer


class Store:
    """A write function whose calls are recorded and can be held open by the test."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.fail: Exception | None = None

    async def write(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(items)
        self.entered.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_concurrent_submits_share_one_write() -> None:
    store = Store()
    coalescer = Coalescer(store.write, max_items=100)
    results = await asyncio.gather(
        *(coalescer.submit(i) for i in (0, 2, 4, 1)), return_exceptions=True
    )
    assert store.calls == [[0, 2, 4, 1]]
    assert results[:3] == [0, 20, 40]
    assert isinstance(results[3], ValueError) and str(results[3]) == "odd 1"


async def test_items_wait_for_the_write_in_flight_then_go_together() -> None:
    store = Store()
    store.gate.clear()
    coalescer = Coalescer(store.write, max_items=3)
    first = asyncio.create_task(coalescer.submit(0))
    await store.entered.wait()
    later = [asyncio.create_task(coalescer.submit(i)) for i in (2, 4, 6, 8)]
    await asyncio.sleep(0)  # let them queue; the write in flight must not start another
    assert store.calls == [[0]]
    store.gate.set()
    assert await asyncio.gather(first, *later) == [0, 20, 40, 60, 80]
    assert store.calls == [[0], [2, 4, 6], [8]]  # max_items per write


async def test_a_failed_write_fails_its_batch_only() -> None:
    store = Store()
    coalescer = Coalescer(store.write, max_items=10)
    store.fail = ConnectionError("database down")
    failed = await asyncio.gather(coalescer.submit(0), coalescer.submit(2), return_exceptions=True)
    assert [type(r) for r in failed] == [ConnectionError, ConnectionError]
    store.fail = None
    assert await coalescer.submit(4) == 40  # the next write is attempted afresh


async def test_a_write_with_the_wrong_number_of_results_fails_its_batch() -> None:
    async def short(items: list[int]) -> Sequence[int | BaseException]:
        return items[:-1]

    coalescer = Coalescer(short, max_items=10)
    results = await asyncio.gather(coalescer.submit(1), coalescer.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_cancelling_the_writer_releases_every_waiter() -> None:
    store = Store()
    store.gate.clear()
    coalescer = Coalescer(store.write, max_items=1)
    waiting = [asyncio.create_task(coalescer.submit(i)) for i in (0, 2)]
    await store.entered.wait()
    writer = coalescer._writer
    assert writer is not None
    writer.cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    store.gate.set()
    assert await coalescer.submit(4) == 40  # a new writer starts for the next item


def test_max_items_must_be_positive() -> None:
    async def write(items: list[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="max_items"):
        Coalescer(write, max_items=0)


async def test_a_full_batch_does_not_wait_for_the_linger() -> None:
    store = Store()
    coalescer = Coalescer(store.write, max_items=3, linger=3600)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)  # the writer starts lingering for company
    assert store.calls == []
    assert list(await asyncio.gather(first, coalescer.submit(2), coalescer.submit(4))) == [
        0,
        20,
        40,
    ]
    assert store.calls == [[0, 2, 4]]


async def test_items_arriving_while_lingering_share_the_write() -> None:
    store = Store()
    coalescer = Coalescer(store.write, max_items=100, linger=0.05)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)  # a later loop iteration: without a linger 0 would go alone
    assert list(await asyncio.gather(first, coalescer.submit(2))) == [0, 20]
    assert store.calls == [[0, 2]]


def test_linger_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="linger"):
        Coalescer(Store().write, max_items=1, linger=-1)
