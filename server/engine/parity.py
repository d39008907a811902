"""Stage ③④ parity service: reference traces and verifications as asynchronous jobs on executor workers.

Each executor of the configured bundle (``qnn:<target>`` on the HTP emulator, ``onnx:<precision>`` on the
CPU EP) runs in its own worker process (the emulator's SoC setting is process-global; one target per
process), started on first use and then kept. Calls to one executor run one at a time, in order. Results
are cached by ``(request_id, executor, bundle_id)`` — here for reference traces, and inside each worker
for its reference tensors — so a verification of a known request costs one comparison. Jobs are kept in
memory with bounded retention; the emulator is 50–90× slower than the CPU EP, so clients poll.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model_runtime.errors import InvalidInputError, ModelLoadError
from model_runtime.parity import worker
from server.errors import GenerationError, InvalidRequestError, JobNotFoundError, NotReadyError, ServerError

logger = logging.getLogger(__name__)

JobKind = Literal["reference", "verify"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]


@dataclass(slots=True)
class ParityJob:
    """One reference or verify job."""

    id: str
    kind: JobKind
    owner: str
    executor: str
    request_id: str
    status: JobStatus = "queued"
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: ServerError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_dict(self) -> dict[str, Any]:
        """The job object (without bulky tensors)."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "parity.job",
            "kind": self.kind,
            "status": self.status,
            "executor": self.executor,
            "request_id": self.request_id,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "urls": {"self": f"/v1/parity/jobs/{self.id}"},
        }
        if self.result is not None:
            out["result"] = {k: v for k, v in self.result.items() if not isinstance(v, bytes | type(None))}
            if self.kind == "reference":
                out["urls"]["tensors"] = f"/v1/parity/jobs/{self.id}/tensors"
            else:
                out["urls"]["report_html"] = f"/v1/parity/jobs/{self.id}/report.html"
        if self.error is not None:
            out["error"] = self.error.to_body()["error"]
        return out


def _to_server_error(err: BaseException) -> ServerError:
    if isinstance(err, ServerError):
        return err
    if isinstance(err, InvalidInputError):
        return InvalidRequestError(str(err), param=err.field)
    if isinstance(err, ModelLoadError):
        return NotReadyError(
            f"the parity executor cannot load the bundle: {err}", code="parity_executor_unavailable"
        )
    if isinstance(err, BrokenProcessPool):
        return NotReadyError(
            "the parity executor process died; it restarts on the next call", code="parity_executor_died"
        )
    logger.exception("parity job failed", exc_info=err)
    return GenerationError(f"the parity executor failed: {type(err).__name__}: {err}")


class ParityService:
    """Reference and verify jobs over per-executor worker processes.

    Args:
        bundle: The bundle whose graphs the executors run.
        executors: Executor names, the first being the default.
        cache_entries: Reference traces kept (per executor worker and here).
        max_jobs: Finished jobs retained (oldest dropped).
        on_report: Called with every verification report (metrics).
    """

    def __init__(
        self,
        bundle: Path,
        executors: list[str],
        *,
        cache_entries: int = 32,
        max_jobs: int = 256,
        on_report: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not executors:
            raise ValueError("at least one parity executor is required")
        for name in executors:
            worker.ExecutorSpec.parse(name)
        self.bundle = bundle
        self.executors = list(executors)
        self.cache_entries = cache_entries
        self.max_jobs = max_jobs
        self.on_report = on_report
        self._pools: dict[str, ProcessPoolExecutor] = {}
        self._jobs: OrderedDict[str, ParityJob] = OrderedDict()
        self._references: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        """The bundle manifest, the noise golden vectors, the executors and the declared tolerances."""
        from model_runtime.bundle import open_bundle
        from model_runtime.noise_dln1 import load_golden_file
        from model_runtime.parity.compare import Tolerances

        try:
            bundle = open_bundle(self.bundle)
        except ModelLoadError as err:
            raise NotReadyError(
                f"the parity bundle cannot be opened: {err}", code="parity_bundle_unavailable"
            ) from err
        manifest = bundle.manifest.model_dump(mode="json")
        declared = (manifest.get("parity") or {}).get("tolerances")
        return {
            "bundle_id": bundle.bundle_id,
            "manifest": manifest,
            "noise": {"spec": "DLN-1", "golden_vectors": load_golden_file()},
            "executors": self.executors,
            "default_executor": self.executors[0],
            "tolerances": declared or Tolerances().model_dump(mode="json"),
            "request_format": "dreamlite-parity-request/1",
            "trace_format": "dreamlite-trace/1",
        }

    # ------------------------------------------------------------------ jobs
    def _executor(self, name: str | None) -> str:
        chosen = name or self.executors[0]
        if chosen not in self.executors:
            raise InvalidRequestError.field(
                "executor", "is not configured.", allowed=", ".join(self.executors), given=chosen
            )
        return chosen

    def _pool(self, executor: str) -> ProcessPoolExecutor:
        pool = self._pools.get(executor)
        if pool is None:
            pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=worker.init_worker,
                initargs=(str(self.bundle), executor, self.cache_entries),
            )
            self._pools[executor] = pool
        return pool

    async def _call(self, executor: str, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool(executor), fn, *args)
        except BrokenProcessPool:
            pool = self._pools.pop(executor, None)
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            raise

    def _register(self, job: ParityJob) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > self.max_jobs:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if not oldest.done.is_set():
                break
            del self._jobs[oldest_id]

    def get(self, job_id: str, owner: str) -> ParityJob:
        """A job of this owner.

        Raises:
            JobNotFoundError: Unknown id or another owner's job.
        """
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise JobNotFoundError(f"no parity job `{job_id}`", param="job_id")
        return job

    def _start(self, job: ParityJob, work: Callable[[], Any]) -> ParityJob:
        async def run() -> None:
            job.status = "running"
            try:
                job.result = await work()
                job.status = "succeeded"
            except Exception as err:
                job.error = _to_server_error(err)
                job.status = "failed"
            finally:
                job.finished_at = time.time()
                job.done.set()

        self._register(job)
        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def submit_reference(
        self, owner: str, request_json: str, request_id: str, image: bytes | None, executor: str | None
    ) -> ParityJob:
        """Queue a reference-trace job."""
        name = self._executor(executor)
        job = ParityJob(
            id="pj_" + uuid.uuid4().hex[:20],
            kind="reference",
            owner=owner,
            executor=name,
            request_id=request_id,
        )

        async def work() -> dict[str, Any]:
            key = (request_id, name)
            if key in self._references:
                self._references.move_to_end(key)
                return {**self._references[key], "cached": True}
            out: dict[str, Any] = await self._call(name, worker.reference, request_json, image)
            self._references[key] = out
            while len(self._references) > self.cache_entries:
                self._references.popitem(last=False)
            return out

        return self._start(job, work)

    def submit_verify(
        self,
        owner: str,
        request_json: str,
        request_id: str,
        device_trace_json: str,
        device_tensors: bytes | None,
        image: bytes | None,
        executor: str | None,
        replay: bool,
        tolerances_json: str | None,
    ) -> ParityJob:
        """Queue a verification job."""
        name = self._executor(executor)
        job = ParityJob(
            id="pj_" + uuid.uuid4().hex[:20], kind="verify", owner=owner, executor=name, request_id=request_id
        )

        async def work() -> dict[str, Any]:
            out: dict[str, Any] = await self._call(
                name,
                worker.verify,
                request_json,
                device_trace_json,
                device_tensors,
                image,
                replay,
                tolerances_json,
            )
            if self.on_report is not None:
                self.on_report(out["report"])
            return out

        return self._start(job, work)

    async def close(self) -> None:
        """Stop the worker processes."""
        for task in list(self._tasks):
            task.cancel()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools.clear()
