"""Stage ② admission: a bounded queue, start deadlines and the Retry-After estimate.

A job is admitted only when the model is ready and fewer than ``max_queued_jobs`` jobs wait; otherwise the
caller gets 503 with a ``Retry-After`` estimated from recent batch durations (never less than the
configured minimum). Each admitted job carries a start deadline; if it has not started by then it fails
with 504 ``deadline_exceeded`` (fal's time-to-start semantics: a running job is never cut off).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from server.engine.interfaces import JobBroker
from server.engine.job import Job
from server.errors import NotReadyError, OverloadedError


class Admission:
    """Admission control for one engine.

    Args:
        max_queued_jobs: Jobs allowed to wait.
        min_retry_after_s: Smallest ``Retry-After``.
        max_batch_size: Samples per batch (to turn queued samples into batches).
        clock: Monotonic clock.
    """

    def __init__(
        self,
        *,
        max_queued_jobs: int,
        min_retry_after_s: int,
        max_batch_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_queued_jobs = max_queued_jobs
        self.min_retry_after_s = min_retry_after_s
        self.max_batch_size = max_batch_size
        self._clock = clock
        self._batch_s: float | None = None

    def record_batch(self, duration_s: float) -> None:
        """Feed one batch duration into the moving average (α = 0.3)."""
        self._batch_s = duration_s if self._batch_s is None else 0.7 * self._batch_s + 0.3 * duration_s

    def estimated_wait_s(self, queued_samples: int) -> float:
        """Expected seconds until a job queued now starts."""
        if self._batch_s is None:
            return 0.0
        return math.ceil(queued_samples / self.max_batch_size) * self._batch_s

    def retry_after_s(self, queued_samples: int) -> int:
        """Seconds to send in ``Retry-After``."""
        return max(self.min_retry_after_s, math.ceil(self.estimated_wait_s(queued_samples)))

    def deadline(self, start_timeout_s: float) -> float:
        """Monotonic time by which a job admitted now must start."""
        return self._clock() + start_timeout_s

    async def admit(self, broker: JobBroker, job: Job, *, ready: bool) -> Job:
        """Queue a job, or refuse it.

        Returns:
            The stored job (an existing one when its Idempotency-Key was already used).

        Raises:
            NotReadyError: The model is not ready.
            OverloadedError: The queue is full (with ``Retry-After``).
        """
        if not ready:
            raise NotReadyError(
                "the model is loading or warming up", code="not_ready", retry_after_s=self.min_retry_after_s
            )
        try:
            return await broker.create(job, max_queued=self.max_queued_jobs)
        except OverloadedError as err:
            retry = self.retry_after_s(await broker.queued_samples())
            raise OverloadedError(err.message + "; retry later", code=err.code, retry_after_s=retry) from err
