"""Stage ② engine: admission → queue → batcher → runner → encode → events, one loop per process.

:class:`Engine` implements :class:`~server.engine.interfaces.EngineClient` for the API layer. Its dispatch
loop asks the batcher for the next batch only when the runner is free, runs it on the runtime thread, and
hands the results to a finishing task (recipes and image encoding in a small thread pool, off the event
loop) so the next batch can start at once. Per-step callbacks come back from the runtime thread with
``loop.call_soon_threadsafe`` and become ``job.progress`` (and optional ``job.preview``) events.

Every job ends with exactly one terminal event: ``job.succeeded``, ``job.failed`` or ``job.canceled``.
Cancellation sets the job's flag; the pipeline drops its samples between steps while the other samples of
the batch carry on, and queued samples are removed from the queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.errors import CanceledError, InvalidInputError
from model_runtime.recipe import rgb8_sha256
from model_runtime.types import SampleResult, StepEvent
from server import __version__
from server.engine.admission import Admission
from server.engine.batcher import Batcher
from server.engine.interfaces import JobBroker, OutputEncoder, PreviewEncoder
from server.engine.job import (
    BatchKey,
    EncodedImage,
    ErrorInfo,
    EventType,
    Job,
    JobEvent,
    JobMode,
    JobRequest,
    JobStatus,
    WorkItem,
)
from server.engine.runner import Runner
from server.errors import (
    DeadlineExceededError,
    GenerationError,
    IdempotencyConflictError,
    InvalidRequestError,
    JobNotFoundError,
    OverloadedError,
    ServerError,
)
from server.observability.metrics import Metrics
from server.observability.tracing import job_id_var
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

_STAGES = ("text_encode", "vae_encode", "denoise", "decode")


def new_job_id() -> str:
    """A fresh ``job_…`` id (unguessable: ids are not a capability, but should not be enumerable)."""
    return "job_" + secrets.token_hex(12)


class Engine:
    """The serving engine of one process.

    Args:
        settings: Server settings.
        broker: Job state, queue and events.
        runner: Owner of the runtime thread.
        metrics: Where to count.
        encoder: Encodes finished images.
        preview_encoder: Encodes step previews.
        clock: Monotonic clock.
        on_load_failure: Called when the model cannot be loaded (``dreamlite serve`` exits then).
    """

    def __init__(
        self,
        *,
        settings: ServerSettings,
        broker: JobBroker,
        runner: Runner,
        metrics: Metrics,
        encoder: OutputEncoder,
        preview_encoder: PreviewEncoder,
        clock: Callable[[], float] = time.monotonic,
        on_load_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_load_failure = on_load_failure
        self.broker = broker
        self.runner = runner
        self.metrics = metrics
        self._encoder = encoder
        self._preview = preview_encoder
        self._clock = clock
        self._gate = asyncio.Event()
        self._gate.set()
        self.batcher = Batcher(
            broker,
            max_batch_size=settings.effective_max_batch_size,
            max_wait_s=settings.batching.max_wait_ms / 1000.0,
            gate=self._gate,
            clock=clock,
        )
        self.admission = Admission(
            max_queued_jobs=settings.queue.max_queued_jobs,
            min_retry_after_s=settings.queue.retry_after_s,
            max_batch_size=settings.effective_max_batch_size,
            clock=clock,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.encode_workers, thread_name_prefix="dreamlite-encode"
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._inflight: Counter[str] = Counter()
        self._startup: asyncio.Task[None] | None = None
        self._dispatch: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        """True once the model is loaded and warmed, until shutdown."""
        return self.runner.ready and not self._closed

    @property
    def load_error(self) -> BaseException | None:
        """Why the model failed to load, if it did."""
        return self.runner.load_error

    async def start(self) -> None:
        """Start loading the model in the background; the dispatch loop starts when it is ready."""
        self._startup = asyncio.create_task(self._start(), name="dreamlite-startup")

    async def _start(self) -> None:
        try:
            await self.runner.start()
        except Exception as err:
            logger.exception("model failed to load; /readyz stays 503")
            if self._on_load_failure is not None:
                self._on_load_failure(err)
            return
        describe = self.runner.runtime.describe() if self.runner.runtime is not None else {}
        self.metrics.model_loaded.labels(
            model=str(describe.get("model_id", "?")), backend=str(describe.get("backend", "?"))
        ).set(1)
        self.metrics.worker_ready.set(1)
        self._dispatch = asyncio.create_task(self._dispatch_loop(), name="dreamlite-dispatch")

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait for startup to finish; True when ready."""
        if self._startup is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._startup), timeout_s)
        return self.ready

    async def close(self) -> None:
        """Stop dispatching, cancel running samples, fail nothing silently, release threads."""
        self._closed = True
        self.metrics.worker_ready.set(0)
        for task in (self._startup, self._dispatch, *self._tasks):
            if task is not None:
                task.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self.runner.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.broker.close()

    def pause(self) -> None:
        """Stop forming new batches (a running batch finishes); queued jobs keep waiting."""
        self._gate.clear()

    def resume(self) -> None:
        """Form batches again."""
        self._gate.set()

    # ------------------------------------------------------------------ API side
    def describe(self) -> dict[str, Any]:
        """Model facts for ``/v1/models`` (empty until loaded)."""
        runtime = self.runner.runtime
        facts: dict[str, Any] = runtime.describe() if runtime is not None else {}
        facts.update(
            {
                "ready": self.ready,
                "server_version": __version__,
                "max_batch_size": self.settings.effective_max_batch_size,
                "max_wait_ms": self.settings.batching.max_wait_ms,
                "max_n": self.settings.limits.max_n,
                "noise_sources": ["torch-cpu", "dln1"],
                "output_formats": ["png", "jpeg", "webp"],
            }
        )
        return facts

    async def submit(
        self,
        request: JobRequest,
        *,
        owner: str,
        mode: JobMode,
        fingerprint: str,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """Validate against the model, admit and queue a job (see :class:`EngineClient`)."""
        if idempotency_key is not None:
            existing = await self.broker.find_idempotent(owner, idempotency_key)
            if existing is not None:
                return self._check_same(existing, fingerprint), False
        if not self.ready:
            self.metrics.jobs_rejected.labels(reason="not_ready").inc()
        key = await self._batch_key(request) if self.ready else None
        job = Job(
            id=new_job_id(),
            request=request,
            owner=owner,
            mode=mode,
            key=key or BatchKey("?", "?", 0, 0, 0, "none"),
            fingerprint=fingerprint,
            idempotency_key=idempotency_key,
            pending=list(range(request.n)),
            deadline=self.admission.deadline(request.start_timeout_s),
        )
        try:
            stored = await self.admission.admit(self.broker, job, ready=self.ready)
        except OverloadedError:
            self.metrics.jobs_rejected.labels(reason="queue_full").inc()
            raise
        if stored is not job:
            return self._check_same(stored, fingerprint), False
        position = await self.broker.queue_position(job.id)
        await self.broker.publish(
            job.id,
            EventType.QUEUED,
            {
                "queue_position": position,
                "eta_ms": round(self.admission.estimated_wait_s(await self.broker.queued_samples()) * 1000),
            },
        )
        self.metrics.jobs_submitted.labels(task=request.task, mode=mode).inc()
        await self._update_queue_gauges()
        loop = asyncio.get_running_loop()
        self._timers[job.id] = loop.call_at(
            loop.time() + max(0.0, job.deadline - self._clock()), self._on_deadline, job
        )
        logger.info(
            "job queued id=%s task=%s n=%d key=%s position=%s prompt_chars=%d",
            job.id,
            request.task,
            request.n,
            job.key.label(),
            position,
            len(request.prompt),
        )
        return job, True

    @staticmethod
    def _check_same(existing: Job, fingerprint: str) -> Job:
        if existing.fingerprint != fingerprint:
            raise IdempotencyConflictError(
                "this Idempotency-Key was already used with a different request body",
                param="Idempotency-Key",
            )
        return existing

    async def _batch_key(self, request: JobRequest) -> BatchKey:
        runtime = self.runner.runtime
        assert runtime is not None
        loop = asyncio.get_running_loop()
        try:
            # Pure validation (no model call), so it runs in the encode pool, not on the runtime thread.
            width, height, steps, guidance = await loop.run_in_executor(
                self._pool, runtime.batch_key, request.spec(0)
            )
        except InvalidInputError as err:
            self.metrics.jobs_rejected.labels(reason="invalid").inc()
            raise InvalidRequestError(str(err), param=err.field) from err
        return BatchKey(
            backend=runtime.backend_name,
            dtype=runtime.dtype,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
            solo=request.deterministic,
        )

    async def get(self, job_id: str, owner: str) -> Job:
        """A job visible to ``owner`` (404 otherwise)."""
        job = await self.broker.get(job_id)
        if job is None or job.owner != owner:
            raise JobNotFoundError(f"no job `{job_id}` (unknown, expired or not yours)", param="job_id")
        return job

    async def cancel(self, job_id: str, owner: str) -> Job:
        """Cancel a job; idempotent, and a finished job is returned unchanged."""
        job = await self.get(job_id, owner)
        if job.status.terminal:
            return job
        job.cancel_flag.set()
        await self.broker.dequeue(job.id)
        if self._inflight[job.id] == 0:
            await self._finalize(job)
        logger.info("job cancel requested id=%s status=%s", job.id, job.status)
        return job

    async def wait(self, job: Job, timeout_s: float | None = None) -> Job:
        """Wait for a terminal status (or the timeout) and return the job's current state."""
        if not job.status.terminal:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._until_terminal(job.id), timeout_s)
        return await self.broker.get(job.id) or job

    async def _until_terminal(self, job_id: str) -> None:
        async with contextlib.aclosing(self.broker.events(job_id)) as stream:
            async for event in stream:
                if event.type.terminal:
                    return

    def events(self, job_id: str, since_seq: int = 0) -> AsyncGenerator[JobEvent, None]:
        """The job's events after ``since_seq``."""
        return self.broker.events(job_id, since_seq)

    async def queue_position(self, job_id: str) -> int | None:
        """Jobs ahead of this one."""
        return await self.broker.queue_position(job_id)

    async def oldest_seq(self, job_id: str) -> int:
        """The smallest event ``seq`` still kept for replay."""
        return await self.broker.oldest_seq(job_id)

    def image_of(self, job: Job, index: int) -> EncodedImage:
        """One finished image (404 when missing)."""
        image = job.images.get(index)
        if image is None:
            raise JobNotFoundError(f"job `{job.id}` has no finished image {index}", param="index")
        return image

    # ------------------------------------------------------------------ dispatch
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch_loop(self) -> None:
        while True:
            items = await self.batcher.next_batch()
            try:
                await self._run_batch(items)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one batch kill the loop
                logger.exception("batch bookkeeping failed")

    async def _run_batch(self, items: list[WorkItem]) -> None:
        key = items[0].job.key
        jobs = list(dict.fromkeys(item.job for item in items))
        started = self._clock()
        for job in jobs:
            if job.status == JobStatus.QUEUED:
                timer = self._timers.pop(job.id, None)
                if timer is not None:
                    timer.cancel()
                job.status = JobStatus.RUNNING
                job.started_at = time.time()
                job.started_mono = started
                job.timings["queue"] = started - job.created_mono
                self.metrics.queue_wait.labels(task=job.task).observe(job.timings["queue"])
                await self.broker.publish(
                    job.id,
                    EventType.STARTED,
                    {"batch_size": len(items), "backend": key.backend, "total_steps": key.steps},
                )
            job.batch_size = max(job.batch_size, len(items))
            job.total_steps = key.steps
            job.step = 0
            await self.broker.save(job)
        for item in items:
            self._inflight[item.job.id] += 1
        self.metrics.jobs_running.labels(backend=key.backend).set(len(self._inflight))
        await self._update_queue_gauges()

        outcomes = await self._execute(items)
        duration = self._clock() - started
        self.admission.record_batch(duration)
        logger.info(
            "batch done size=%d jobs=%d key=%s dur_ms=%.1f",
            len(items),
            len(jobs),
            key.label(),
            duration * 1000,
        )
        self._spawn(self._finish_batch(items, outcomes))

    async def _execute(self, items: list[WorkItem]) -> list[SampleResult | ServerError | None]:
        """Run items as one batch; per item: its result, its error, or None when canceled.

        A batch that fails as a whole (an out-of-memory error, one bad sample) is split and retried one
        sample at a time, so one sample cannot fail its batch mates.
        """
        key = items[0].job.key
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[StepEvent | None] = asyncio.Queue()

        def on_step(event: StepEvent) -> None:  # runtime thread
            loop.call_soon_threadsafe(steps.put_nowait, event)

        consumer = asyncio.create_task(self._consume_steps(items, steps))
        results: list[SampleResult] | None = None
        error: ServerError | None = None
        try:
            results = await self.runner.run(
                [item.spec for item in items], on_step, [item.job.cancel_flag for item in items]
            )
        except CanceledError:
            return [None] * len(items)
        except InvalidInputError as err:
            error = InvalidRequestError(str(err), param=err.field)
        except Exception:
            logger.exception("runtime failed on batch key=%s size=%d", key.label(), len(items))
            error = GenerationError("the runtime failed while computing this batch")
        finally:
            steps.put_nowait(None)
            await consumer
        if error is not None or results is None:
            if len(items) == 1:
                return [error]
            logger.warning("batch of %d failed; retrying its samples one by one", len(items))
            outcomes: list[SampleResult | ServerError | None] = []
            for item in items:
                outcomes.extend([None] if item.job.cancel_flag.is_set() else await self._execute([item]))
            return outcomes
        tasks = {item.job.task for item in items}
        task_label = tasks.pop() if len(tasks) == 1 else "mixed"
        self.metrics.batches.labels(backend=key.backend, task=task_label).inc()
        self.metrics.batch_size.labels(backend=key.backend, task=task_label).observe(len(items))
        timings = results[0].timings
        for stage in _STAGES:
            if stage in timings:
                self.metrics.stage_duration.labels(stage=stage, backend=key.backend).observe(timings[stage])
        if "denoise" in timings and key.steps:
            self.metrics.step_duration.labels(backend=key.backend).observe(timings["denoise"] / key.steps)
        return [r if r.status == "succeeded" and r.image is not None else None for r in results]

    async def _consume_steps(self, items: list[WorkItem], steps: asyncio.Queue[StepEvent | None]) -> None:
        loop = asyncio.get_running_loop()
        while (event := await steps.get()) is not None:
            announced: set[str] = set()
            for row, position in enumerate(event.indices):
                item = items[position]
                job = item.job
                if job.id not in announced:
                    announced.add(job.id)
                    job.step = event.step
                    await self.broker.publish(
                        job.id, EventType.PROGRESS, {"step": event.step, "total_steps": event.total}
                    )
                if job.request.previews:
                    latents: NDArray[np.float32] = event.latents[row]  # (4, h, w) float32
                    fmt, data = await loop.run_in_executor(self._pool, self._preview, latents)
                    await self.broker.publish(
                        job.id,
                        EventType.PREVIEW,
                        {"index": item.index, "step": event.step, "format": fmt, "data": data},
                    )

    async def _finish_batch(
        self, items: list[WorkItem], outcomes: list[SampleResult | ServerError | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        runtime = self.runner.runtime
        timed: set[str] = set()
        for item, outcome in zip(items, outcomes, strict=True):
            job = item.job
            token = job_id_var.set(job.id)
            try:
                if isinstance(outcome, SampleResult) and job.id not in timed:  # stage times once per batch
                    timed.add(job.id)
                    for stage in _STAGES:
                        if stage in outcome.timings:
                            job.timings[stage] = job.timings.get(stage, 0.0) + outcome.timings[stage]
                if isinstance(outcome, ServerError):
                    await self._fail(job, outcome)
                elif outcome is not None:
                    assert runtime is not None
                    t0 = self._clock()
                    try:
                        image = await loop.run_in_executor(
                            self._pool, self._encode, runtime, job, item, outcome
                        )
                    except Exception:
                        logger.exception("image encoding failed")
                        await self._fail(job, GenerationError("encoding the output image failed"))
                    else:
                        spent = self._clock() - t0
                        job.timings["image_encode"] = job.timings.get("image_encode", 0.0) + spent
                        self.metrics.stage_duration.labels(
                            stage="image_encode", backend=job.key.backend
                        ).observe(spent)
                        self.metrics.response_size.labels(output_format=image.format).observe(len(image.data))
                        await self._add_image(job, image)
            finally:
                job_id_var.reset(token)
            self._inflight[job.id] -= 1
            job.samples_done += 1
            if self._inflight[job.id] <= 0:
                del self._inflight[job.id]
                if not job.pending:
                    await self._finalize(job)
        self.metrics.jobs_running.labels(backend=items[0].job.key.backend).set(len(self._inflight))

    def _encode(self, runtime: Any, job: Job, item: WorkItem, result: SampleResult) -> EncodedImage:
        """Recipe + file bytes of one image (encode pool)."""
        assert result.image is not None
        request = job.request
        extra: dict[str, Any] = {"job_id": job.id, "index": item.index, "server_version": __version__}
        if request.task == "edit":
            extra["input_image_sha256"] = request.image_sha256
        recipe: dict[str, Any] = runtime.recipe(result, **extra)
        data = self._encoder(result.image, recipe, request.output)
        return EncodedImage(
            index=item.index,
            seed=result.recipe.seed,
            data=data,
            format=request.output.format,
            width=int(result.image.shape[1]),
            height=int(result.image.shape[0]),
            rgb8_sha256=str(recipe.get("rgb8_sha256") or rgb8_sha256(result.image)),
            recipe=recipe,
        )

    async def _add_image(self, job: Job, image: EncodedImage) -> None:
        if job.status.terminal:
            return
        first = not job.images
        job.images[image.index] = image
        if first:
            self.metrics.time_to_first_image.labels(task=job.task).observe(self._clock() - job.created_mono)
        self.metrics.images_generated.labels(task=job.task, backend=job.key.backend).inc()
        data: dict[str, Any] = {
            "index": image.index,
            "seed": image.seed,
            "width": image.width,
            "height": image.height,
            "format": image.format,
            "rgb8_sha256": image.rgb8_sha256,
            "batch_size": image.recipe.get("batch_size"),
        }
        if job.request.output.response_format == "b64_json":
            data["b64_json"] = base64.b64encode(image.data).decode()
        else:
            data["url"] = f"/v1/jobs/{job.id}/images/{image.index}"
        await self.broker.publish(job.id, EventType.IMAGE, data)
        await self.broker.save(job)

    async def _finalize(self, job: Job) -> None:
        """Publish the one terminal event of a job whose samples are all done."""
        if job.status.terminal:
            return
        if job.cancel_flag.is_set():
            job.status = JobStatus.CANCELED
            data: dict[str, Any] = {"images_done": len(job.images)}
            event = EventType.CANCELED
        elif len(job.images) == job.request.n:
            job.status = JobStatus.SUCCEEDED
            data = {"images": len(job.images), "batch_size": job.batch_size}
            event = EventType.SUCCEEDED
        else:  # a sample vanished without an error: never leave a job hanging
            await self._fail(job, GenerationError("some images were not produced"))
            return
        await self._complete(job, event, data)

    async def _fail(self, job: Job, error: ServerError) -> None:
        if job.status.terminal:
            return
        await self.broker.dequeue(job.id)
        job.error = ErrorInfo(
            type=error.error_type,
            code=error.code,
            message=error.message,
            status_code=error.status_code,
            param=error.param,
        )
        job.status = JobStatus.FAILED
        self.metrics.failures.labels(error_type=error.error_type).inc()
        await self._complete(job, EventType.FAILED, {"error": job.error.to_body()})

    async def _complete(self, job: Job, event: EventType, data: dict[str, Any]) -> None:
        timer = self._timers.pop(job.id, None)
        if timer is not None:
            timer.cancel()
        job.completed_at = time.time()
        job.timings["total"] = self._clock() - job.created_mono
        data["timings_ms"] = {k: round(v * 1000.0, 1) for k, v in job.timings.items()}
        await self.broker.save(job)
        await self.broker.publish(job.id, event, data)
        self.metrics.jobs_completed.labels(
            task=job.task, backend=job.key.backend, outcome=str(job.status)
        ).inc()
        self.metrics.request_duration.labels(task=job.task, mode=job.mode).observe(job.timings["total"])
        await self._update_queue_gauges()
        logger.info(
            "job done id=%s status=%s images=%d batch_size=%d %s",
            job.id,
            job.status,
            len(job.images),
            job.batch_size,
            " ".join(f"{k}_ms={v * 1000:.1f}" for k, v in job.timings.items()),
        )

    def _on_deadline(self, job: Job) -> None:
        self._spawn(self._expire(job))

    async def _expire(self, job: Job) -> None:
        """Start deadline passed: fail a job that is still waiting with 504."""
        self._timers.pop(job.id, None)
        if job.status != JobStatus.QUEUED:
            return
        self.metrics.jobs_rejected.labels(reason="deadline_exceeded").inc()
        await self._fail(
            job,
            DeadlineExceededError(
                f"the job did not start within its start timeout of {job.request.start_timeout_s:g} s",
                param="timeout_s",
            ),
        )

    async def _update_queue_gauges(self) -> None:
        self.metrics.queue_depth.set(await self.broker.queue_depth())
        self.metrics.queue_estimated_wait.set(
            self.admission.estimated_wait_s(await self.broker.queued_samples())
        )
