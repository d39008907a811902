"""Stage ② seams: the protocols the engine is built from and the one the HTTP layer depends on.

* :class:`JobBroker` — job records, the admission queue, per-job event logs with replay and the
  Idempotency-Key index. :class:`server.scaleout.memory_broker.MemoryBroker` implements it in-process; a
  Redis implementation (job hashes, per-batch-key streams, event streams) can take over for scale-out
  without touching the engine or the API.
* :class:`Runtime` — what the runner drives on its single thread (the model pipeline; a fake with a
  fixed step time in batcher unit tests).
* :class:`OutputEncoder` — turns pixels + recipe into the requested file (implemented by ``api.media``).
* :class:`EngineClient` — everything the API layer may ask of the engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from model_runtime.types import CancelFlag, SampleResult, SampleSpec, StepCallback
from server.engine.job import (
    BatchKey,
    EncodedImage,
    EventType,
    Job,
    JobEvent,
    JobMode,
    JobRequest,
    OutputOptions,
    WorkItem,
)


class JobBroker(Protocol):
    """Job state, the queue and event streams (in memory now, Redis later)."""

    async def create(self, job: Job, *, max_queued: int) -> Job:
        """Store a new job and queue its samples (atomically with its Idempotency-Key).

        Args:
            job: A job in status ``queued`` with ``pending`` samples.
            max_queued: Admission bound on queued jobs.

        Returns:
            ``job``, or the existing job when its owner already used the Idempotency-Key.

        Raises:
            OverloadedError: The queue already holds ``max_queued`` jobs.
        """
        ...

    async def get(self, job_id: str) -> Job | None:
        """A job by id (None when unknown or expired)."""
        ...

    async def save(self, job: Job) -> None:
        """Persist a job's changed fields."""
        ...

    async def find_idempotent(self, owner: str, key: str) -> Job | None:
        """The job an owner created with this Idempotency-Key, if still retained."""
        ...

    async def queue_position(self, job_id: str) -> int | None:
        """Jobs ahead of this one, or None when it is not queued."""
        ...

    async def queue_depth(self) -> int:
        """Jobs waiting (with samples not yet dispatched)."""
        ...

    async def queued_samples(self) -> int:
        """Samples waiting."""
        ...

    async def head(self) -> tuple[BatchKey, float] | None:
        """Batch key and enqueue time (monotonic) of the oldest waiting sample."""
        ...

    async def count(self, key: BatchKey) -> int:
        """Samples waiting under one key."""
        ...

    async def take(self, key: BatchKey, max_samples: int) -> list[WorkItem]:
        """Remove up to ``max_samples`` samples of one key, oldest first."""
        ...

    async def dequeue(self, job_id: str) -> bool:
        """Remove a job's waiting samples (cancel/expiry); True if it had any."""
        ...

    async def wait_for_work(self, timeout_s: float | None) -> None:
        """Return when samples were queued since the last call, or after ``timeout_s``."""
        ...

    async def publish(self, job_id: str, type: EventType, data: dict[str, Any]) -> JobEvent:
        """Append an event to a job's log (assigning its ``seq``) and wake subscribers."""
        ...

    def events(self, job_id: str, since_seq: int = 0) -> AsyncGenerator[JobEvent, None]:
        """A job's events with ``seq > since_seq``: the replay, then live events until the terminal one."""
        ...

    async def oldest_seq(self, job_id: str) -> int:
        """The smallest ``seq`` still kept for a job (replay older than this is trimmed)."""
        ...

    async def sweep(self) -> int:
        """Drop finished jobs past their retention; returns how many were dropped."""
        ...

    async def close(self) -> None:
        """Release resources."""
        ...


class Runtime(Protocol):
    """The model as the runner drives it (only ever from the runtime thread)."""

    backend_name: str
    dtype: str

    def batch_key(self, spec: SampleSpec) -> tuple[int, int, int, str]:
        """Validate a spec; return its (working width, working height, steps, guidance mode)."""
        ...

    def run(
        self,
        specs: Sequence[SampleSpec],
        on_step: StepCallback | None,
        cancel_flags: Sequence[CancelFlag | None],
    ) -> list[SampleResult]:
        """Run one batch (one denoiser call per step)."""
        ...

    def recipe(self, result: SampleResult, **extra: Any) -> dict[str, Any]:
        """The JSON recipe of a result."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model facts (id, sizes, steps, weights hash …)."""
        ...


class OutputEncoder(Protocol):
    """Encodes one finished image (runs in the encode thread pool)."""

    def __call__(self, image: NDArray[np.uint8], recipe: dict[str, Any], options: OutputOptions) -> bytes:
        """The file bytes in ``options.format``; PNG embeds ``recipe`` unless stripped."""
        ...


class PreviewEncoder(Protocol):
    """Turns one sample's latents into a small preview image (runs in the encode thread pool)."""

    def __call__(self, latents: NDArray[np.float32]) -> tuple[str, str]:
        """``(format, base64 data)`` of a low-resolution preview of ``(4, h, w)`` latents."""
        ...


class EngineClient(Protocol):
    """What the HTTP and WebSocket layers may ask of the engine."""

    @property
    def ready(self) -> bool:
        """True once the model is loaded and warmed."""
        ...

    async def submit(
        self,
        request: JobRequest,
        *,
        owner: str,
        mode: JobMode,
        fingerprint: str,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """Validate against the model, admit and queue a job.

        Returns:
            The job and whether it was newly created (False: an existing job for the Idempotency-Key).

        Raises:
            InvalidRequestError, OverloadedError, NotReadyError, IdempotencyConflictError.
        """
        ...

    async def get(self, job_id: str, owner: str) -> Job:
        """A job visible to ``owner``.

        Raises:
            JobNotFoundError: Unknown, expired or someone else's.
        """
        ...

    async def cancel(self, job_id: str, owner: str) -> Job:
        """Cancel a queued or running job (idempotent; a finished job is returned unchanged)."""
        ...

    async def wait(self, job: Job, timeout_s: float | None = None) -> Job:
        """Wait until the job is terminal (or the timeout passes) and return it."""
        ...

    def events(self, job_id: str, since_seq: int = 0) -> AsyncGenerator[JobEvent, None]:
        """The job's events after ``since_seq`` (replay, then live, ending with the terminal event)."""
        ...

    async def queue_position(self, job_id: str) -> int | None:
        """Jobs ahead of this one, or None when it is not waiting."""
        ...

    async def oldest_seq(self, job_id: str) -> int:
        """The smallest event ``seq`` still kept for replay."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model facts for ``/v1/models``."""
        ...

    def image_of(self, job: Job, index: int) -> EncodedImage:
        """One finished image of a job.

        Raises:
            JobNotFoundError: No such image.
        """
        ...
