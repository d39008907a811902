"""The in-memory JobBroker: queue order and keys, admission bound, idempotency, events and retention."""

from __future__ import annotations

import asyncio

import pytest

from server.engine.job import BatchKey, EventType, JobStatus
from server.errors import OverloadedError
from server.scaleout.memory_broker import MemoryBroker
from tests.unit.server.conftest import make_job

pytestmark = pytest.mark.anyio
K1 = BatchKey("fake", "float32", 64, 64, 4, "none")
K2 = BatchKey("fake", "float32", 128, 128, 4, "none")


async def test_take_groups_by_key_oldest_first_and_splits_jobs() -> None:
    broker = MemoryBroker()
    await broker.create(make_job("a", K1, n=2, created=1.0), max_queued=10)
    await broker.create(make_job("b", K2, created=2.0), max_queued=10)
    await broker.create(make_job("c", K1, n=3, created=3.0), max_queued=10)
    assert await broker.head() == (K1, 1.0)
    assert await broker.count(K1) == 5
    assert [await broker.queue_position(j) for j in "abc"] == [0, 1, 2]
    items = await broker.take(K1, 3)
    assert [(i.job.id, i.index) for i in items] == [("a", 0), ("a", 1), ("c", 0)]
    assert await broker.queue_position("a") is None  # fully dispatched
    assert await broker.queued_samples() == 3
    assert await broker.head() == (K2, 2.0)
    assert await broker.dequeue("c") is True
    assert await broker.count(K1) == 0


async def test_admission_bound_counts_waiting_jobs() -> None:
    broker = MemoryBroker()
    await broker.create(make_job("a"), max_queued=1)
    with pytest.raises(OverloadedError):
        await broker.create(make_job("b"), max_queued=1)


async def test_idempotency_key_returns_the_stored_job() -> None:
    broker = MemoryBroker()
    first = make_job("a")
    first.idempotency_key = "k"
    assert await broker.create(first, max_queued=5) is first
    second = make_job("b")
    second.idempotency_key = "k"
    assert await broker.create(second, max_queued=5) is first
    assert await broker.get("b") is None


async def test_events_replay_then_follow_until_terminal() -> None:
    broker = MemoryBroker()
    await broker.create(make_job("a"), max_queued=5)
    await broker.publish("a", EventType.QUEUED, {"queue_position": 0})
    await broker.publish("a", EventType.STARTED, {"batch_size": 1})

    async def collect(since: int) -> list[int]:
        return [e.seq async for e in broker.events("a", since)]

    follower = asyncio.create_task(collect(0))
    await asyncio.sleep(0.01)
    await broker.publish("a", EventType.PROGRESS, {"step": 1})
    await broker.publish("a", EventType.SUCCEEDED, {})
    assert await asyncio.wait_for(follower, 2) == [1, 2, 3, 4]
    assert await collect(2) == [3, 4]
    assert await collect(4) == []


async def test_retention_drops_old_finished_jobs() -> None:
    now = [0.0]
    broker = MemoryBroker(ttl_s=10, max_retained=2, clock=lambda: now[0])
    for name in "abc":
        job = make_job(name)
        await broker.create(job, max_queued=5)
        job.status = JobStatus.SUCCEEDED
        await broker.save(job)
    assert await broker.get("a") is None  # beyond max_retained
    assert await broker.get("b") is not None
    now[0] = 100.0
    assert await broker.sweep() == 2
    assert len(broker) == 0
