"""Stage ② batching: form the next batch from the queue by an explicit batch key (Triton semantics).

The key is (backend, dtype, working size, steps, guidance mode) — not the task, so generate and edit
samples of the same working size ride in one UNet batch. The batcher runs only when the runner is free
(the engine asks for the next batch after the previous one returned), which lets the queue fill while a
batch computes. Rule, for the key of the oldest waiting sample:

* if ``max_batch_size`` samples of that key wait, take them at once;
* otherwise wait for more, but never longer than ``max_wait_ms`` after the oldest sample arrived;
* deterministic samples carry a ``solo`` key and always run alone (batch size 1).

Samples of other keys wait for their turn; the oldest waiting sample always decides the next key, so no
key starves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from server.engine.interfaces import JobBroker
from server.engine.job import WorkItem


class Batcher:
    """Chooses which samples run together next.

    Args:
        broker: Where the queued samples are.
        max_batch_size: Most samples per batch (1 turns batching off).
        max_wait_s: Longest wait for a fuller batch, measured from the oldest sample's arrival.
        gate: While cleared, no batch is formed (the engine's pause switch).
        clock: Monotonic clock (the broker's enqueue times use the same one).
    """

    def __init__(
        self,
        broker: JobBroker,
        *,
        max_batch_size: int,
        max_wait_s: float,
        gate: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.broker = broker
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._gate = gate

    async def next_batch(self) -> list[WorkItem]:
        """Wait for and return the next batch (never empty).

        Returns:
            Work items sharing one batch key, oldest first.
        """
        while True:
            if self._gate is not None:
                await self._gate.wait()
            head = await self.broker.head()
            if head is None:
                await self.broker.wait_for_work(None)
                continue
            key, enqueued = head
            limit = 1 if key.solo else self.max_batch_size
            waited_enough = self._clock() - enqueued >= self.max_wait_s
            if waited_enough or await self.broker.count(key) >= limit:
                items = await self.broker.take(key, limit)
                if items:
                    return items
                continue
            await self.broker.wait_for_work(max(0.0, enqueued + self.max_wait_s - self._clock()))
