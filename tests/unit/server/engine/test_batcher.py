"""Batch formation: full batches go at once, partial ones after max_wait, keys never mix, solo stays solo."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine.batcher import Batcher
from server.engine.job import BatchKey
from server.scaleout.memory_broker import MemoryBroker
from tests.unit.server.conftest import make_job

pytestmark = pytest.mark.anyio
K1 = BatchKey("fake", "float32", 64, 64, 4, "none")
K2 = BatchKey("fake", "float32", 64, 64, 8, "none")
SOLO = BatchKey("fake", "float32", 64, 64, 4, "none", solo=True)


async def test_full_batch_leaves_at_once() -> None:
    broker = MemoryBroker()
    batcher = Batcher(broker, max_batch_size=2, max_wait_s=10.0)
    now = time.monotonic()
    await broker.create(make_job("a", K1, created=now), max_queued=10)
    await broker.create(make_job("b", K1, created=now), max_queued=10)
    started = time.monotonic()
    items = await asyncio.wait_for(batcher.next_batch(), 2)
    assert [i.job.id for i in items] == ["a", "b"]
    assert time.monotonic() - started < 1.0


async def test_partial_batch_waits_for_max_wait_then_goes() -> None:
    broker = MemoryBroker()
    batcher = Batcher(broker, max_batch_size=4, max_wait_s=0.15)
    await broker.create(make_job("a", K1, created=time.monotonic()), max_queued=10)
    started = time.monotonic()
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0.05)
    await broker.create(make_job("b", K1, created=time.monotonic()), max_queued=10)
    items = await asyncio.wait_for(task, 2)
    waited = time.monotonic() - started
    assert [i.job.id for i in items] == ["a", "b"]
    assert 0.1 <= waited < 1.0


async def test_keys_never_mix_and_the_oldest_key_goes_first() -> None:
    broker = MemoryBroker()
    batcher = Batcher(broker, max_batch_size=8, max_wait_s=0.0)
    await broker.create(make_job("a", K2, created=1.0), max_queued=10)
    await broker.create(make_job("b", K1, created=2.0), max_queued=10)
    await broker.create(make_job("c", K2, created=3.0), max_queued=10)
    first = await batcher.next_batch()
    second = await batcher.next_batch()
    assert [i.job.id for i in first] == ["a", "c"]
    assert [i.job.id for i in second] == ["b"]


async def test_solo_samples_run_alone_and_n_is_split_by_max_batch_size() -> None:
    broker = MemoryBroker()
    batcher = Batcher(broker, max_batch_size=2, max_wait_s=0.0)
    await broker.create(make_job("d", SOLO, n=2, created=1.0), max_queued=10)
    await broker.create(make_job("e", K1, n=3, created=2.0), max_queued=10)
    sizes = [[(i.job.id, i.index) for i in await batcher.next_batch()] for _ in range(4)]
    assert sizes == [[("d", 0)], [("d", 1)], [("e", 0), ("e", 1)], [("e", 2)]]


async def test_gate_holds_batches_while_paused() -> None:
    broker = MemoryBroker()
    gate = asyncio.Event()
    batcher = Batcher(broker, max_batch_size=1, max_wait_s=0.0, gate=gate)
    await broker.create(make_job("a", K1), max_queued=10)
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0.05)
    assert not task.done()
    gate.set()
    assert len(await asyncio.wait_for(task, 2)) == 1


def test_max_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(MemoryBroker(), max_batch_size=0, max_wait_s=0)
