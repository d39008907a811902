"""Stage ③ scale-out seam, in-process: job records, the admission queue and event logs in memory.

:class:`MemoryBroker` implements :class:`server.engine.interfaces.JobBroker` for one process. All methods
run on the event loop (no locks needed); they are ``async`` so that a Redis broker (job hashes with TTL,
per-batch-key streams, ``job:{id}:events`` streams, ``SET NX`` idempotency keys) can replace it without
changing the engine. Retention is bounded: finished jobs expire after ``ttl_s`` and at most
``max_retained`` are kept; each job keeps its last ``event_buffer`` events for replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from server.engine.job import BatchKey, EventType, Job, JobEvent, WorkItem
from server.errors import OverloadedError


@dataclass(slots=True)
class _EventLog:
    events: deque[JobEvent]
    next_seq: int = 1
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    closed: bool = False


class MemoryBroker:
    """The in-process :class:`~server.engine.interfaces.JobBroker`.

    Args:
        ttl_s: Seconds a finished job is kept.
        max_retained: Most finished jobs kept.
        event_buffer: Events kept per job.
        idempotency_ttl_s: Seconds an Idempotency-Key maps to its job.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        *,
        ttl_s: float = 3600.0,
        max_retained: int = 1000,
        event_buffer: int = 1024,
        idempotency_ttl_s: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_retained = max_retained
        self.event_buffer = event_buffer
        self.idempotency_ttl_s = idempotency_ttl_s
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._queue: OrderedDict[str, Job] = OrderedDict()  # jobs with samples not yet dispatched
        self._finished: OrderedDict[str, float] = OrderedDict()  # job id → finish time (monotonic)
        self._idem: dict[tuple[str, str], tuple[str, float]] = {}  # (owner, key) → (job id, expiry)
        self._logs: dict[str, _EventLog] = {}
        self._work = asyncio.Event()

    # ------------------------------------------------------------------ jobs
    async def create(self, job: Job, *, max_queued: int) -> Job:
        """Store and queue a job; an Idempotency-Key already taken returns the existing job instead.

        Raises:
            OverloadedError: ``max_queued`` jobs are already waiting.
        """
        if job.idempotency_key is not None:
            existing = await self.find_idempotent(job.owner, job.idempotency_key)
            if existing is not None:
                return existing
        if len(self._queue) >= max_queued:
            raise OverloadedError(
                f"the queue is full ({len(self._queue)} jobs waiting)", code="server_overloaded"
            )
        self._jobs[job.id] = job
        self._logs[job.id] = _EventLog(events=deque(maxlen=self.event_buffer))
        if job.idempotency_key is not None:
            expiry = self._clock() + self.idempotency_ttl_s
            self._idem[(job.owner, job.idempotency_key)] = (job.id, expiry)
        if job.pending:
            self._queue[job.id] = job
            self._work.set()
        return job

    async def get(self, job_id: str) -> Job | None:
        """A job by id, or None."""
        return self._jobs.get(job_id)

    async def save(self, job: Job) -> None:
        """Record a job's new state; terminal jobs start their retention clock."""
        if job.status.terminal and job.id not in self._finished:
            self._queue.pop(job.id, None)
            self._finished[job.id] = self._clock()
            log = self._logs.get(job.id)
            if log is not None:
                log.closed = True
            await self.sweep()

    async def find_idempotent(self, owner: str, key: str) -> Job | None:
        """The retained job created by ``owner`` with Idempotency-Key ``key``."""
        entry = self._idem.get((owner, key))
        if entry is None:
            return None
        job_id, expiry = entry
        if expiry < self._clock() or job_id not in self._jobs:
            del self._idem[(owner, key)]
            return None
        return self._jobs[job_id]

    # ------------------------------------------------------------------ queue
    async def queue_position(self, job_id: str) -> int | None:
        """Jobs ahead of ``job_id`` in the queue (0 = next), or None when it is not waiting."""
        for position, queued_id in enumerate(self._queue):
            if queued_id == job_id:
                return position
        return None

    async def queue_depth(self) -> int:
        """Jobs with samples waiting."""
        return len(self._queue)

    async def queued_samples(self) -> int:
        """Samples waiting."""
        return sum(len(job.pending) for job in self._queue.values())

    async def head(self) -> tuple[BatchKey, float] | None:
        """Key and enqueue time of the oldest waiting sample."""
        for job in self._queue.values():
            if job.pending:
                return job.key, job.created_mono
        return None

    async def count(self, key: BatchKey) -> int:
        """Samples waiting under ``key``."""
        return sum(len(job.pending) for job in self._queue.values() if job.key == key)

    async def take(self, key: BatchKey, max_samples: int) -> list[WorkItem]:
        """Remove up to ``max_samples`` samples under ``key``, oldest job first, in index order."""
        items: list[WorkItem] = []
        for job_id, job in list(self._queue.items()):
            if len(items) >= max_samples:
                break
            if job.key != key:
                continue
            while job.pending and len(items) < max_samples:
                items.append(WorkItem(job, job.pending.pop(0)))
            if not job.pending:
                del self._queue[job_id]
        return items

    async def dequeue(self, job_id: str) -> bool:
        """Drop a job's waiting samples; True if it had any."""
        job = self._queue.pop(job_id, None)
        if job is None or not job.pending:
            return False
        job.pending.clear()
        return True

    async def wait_for_work(self, timeout_s: float | None) -> None:
        """Return when work was queued since the last call, or after ``timeout_s`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout_s)
        self._work.clear()

    # ------------------------------------------------------------------ events
    async def publish(self, job_id: str, type: EventType, data: dict[str, Any]) -> JobEvent:
        """Append one event (seq assigned here) and wake the job's subscribers."""
        log = self._logs.get(job_id)
        if log is None:
            raise KeyError(job_id)
        event = JobEvent(type=type, job_id=job_id, seq=log.next_seq, ts=time.time(), data=data)
        async with log.changed:
            log.events.append(event)
            log.next_seq += 1
            if type.terminal:
                log.closed = True
            log.changed.notify_all()
        return event

    async def events(self, job_id: str, since_seq: int = 0) -> AsyncGenerator[JobEvent, None]:
        """Replay the events after ``since_seq``, then follow live ones until the terminal event."""
        log = self._logs.get(job_id)
        if log is None:
            return
        cursor = since_seq
        while True:
            fresh = [e for e in log.events if e.seq > cursor]
            for event in fresh:
                yield event
                cursor = event.seq
                if event.type.terminal:
                    return
            if log.closed and log.next_seq - 1 <= cursor:
                return
            async with log.changed:
                await log.changed.wait_for(lambda c=cursor: log.next_seq - 1 > c or log.closed)  # type: ignore[misc]

    async def oldest_seq(self, job_id: str) -> int:
        """Smallest kept ``seq`` (1 when nothing was trimmed)."""
        log = self._logs.get(job_id)
        if log is None or not log.events:
            return 1
        return log.events[0].seq

    # ------------------------------------------------------------------ retention
    async def sweep(self) -> int:
        """Drop finished jobs older than ``ttl_s`` and the oldest beyond ``max_retained``."""
        now = self._clock()
        dropped = 0
        while self._finished:
            job_id, finished = next(iter(self._finished.items()))
            if finished + self.ttl_s > now and len(self._finished) <= self.max_retained:
                break
            self._finished.popitem(last=False)
            self._jobs.pop(job_id, None)
            self._logs.pop(job_id, None)
            dropped += 1
        if dropped:
            self._idem = {k: v for k, v in self._idem.items() if v[0] in self._jobs and v[1] >= now}
        return dropped

    def __len__(self) -> int:
        return len(self._jobs)

    async def close(self) -> None:
        """Wake every subscriber so they can finish."""
        for log in self._logs.values():
            async with log.changed:
                log.closed = True
                log.changed.notify_all()
