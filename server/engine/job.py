"""Stage ② jobs: the value types that flow from the API through the queue, the batcher and the runner.

Vocabulary (style.md §3.4): a *request* is one HTTP call; a *job* is one unit of work (one prompt, ``n``
images with seeds ``seed + i``); a *sample* is one of those images; a *batch* is samples run together
through one UNet call per step. A job's events carry a per-job sequence number starting at 1, and every
job ends with exactly one terminal event.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from model_runtime.types import SampleSpec

ImageFormat = Literal["png", "jpeg", "webp"]
ResponseFormat = Literal["b64_json", "url"]
JobMode = Literal["sync", "async", "ws"]
Task = Literal["generate", "edit"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class JobStatus(StrEnum):
    """Where a job is in its life; the last three are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """True for succeeded, failed and canceled."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class EventType(StrEnum):
    """Typed job events (one schema for WebSocket frames and the docs)."""

    QUEUED = "job.queued"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    PREVIEW = "job.preview"
    IMAGE = "job.image"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"

    @property
    def terminal(self) -> bool:
        """True for the three terminal events."""
        return self in (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELED)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of one job.

    Attributes:
        type: The event type.
        job_id: The job it belongs to.
        seq: Per-job sequence number, 1, 2, 3 …
        ts: Unix time in seconds.
        data: Type-specific fields (``queue_position``, ``step`` …).
    """

    type: EventType
    job_id: str
    seq: int
    ts: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The JSON frame: ``{"type", "job_id", "seq", "ts", **data}``."""
        return {"type": str(self.type), "job_id": self.job_id, "seq": self.seq, "ts": self.ts, **self.data}


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """How the images of a job are encoded and returned.

    Attributes:
        format: ``png``, ``jpeg`` or ``webp``.
        quality: JPEG/WebP quality 0–100 (``output_compression`` on the wire).
        embed_metadata: Embed the recipe in PNG text metadata.
        response_format: ``b64_json`` or ``url``.
    """

    format: ImageFormat = "png"
    quality: int = 95
    embed_metadata: bool = True
    response_format: ResponseFormat = "b64_json"


@dataclass(frozen=True, slots=True, eq=False)
class JobRequest:
    """A validated request, ready for the engine.

    Attributes:
        task: ``generate`` or ``edit``.
        prompt: The prompt or edit instruction.
        seed: Seed of image 0 (image ``i`` uses ``seed + i``); always resolved.
        seed_drawn: True when the server drew the seed.
        n: Number of images.
        width: Output width, or None for the model's default (generate) / the source's (edit).
        height: Output height, as ``width``.
        steps: Denoising steps, or None for the model's default.
        noise: ``torch-cpu`` or ``dln1``.
        image: Edit source ``(H, W, 3)`` uint8.
        image_sha256: SHA-256 of the edit source's RGB8 pixels.
        working_size: Edit working (W, H), or None for the model's.
        output: Encoding options.
        deterministic: Run each image solo (bits independent of other queued work).
        start_timeout_s: The job fails with 504 if it has not started by then.
        previews: Emit low-resolution ``job.preview`` events after each step.
        model: The model id asked for (already checked).
        guidance_scale: Text guidance (base models), or None for the model's default.
        image_guidance_scale: Image guidance for edits (base models), or None.
    """

    task: Task
    prompt: str
    seed: int
    n: int = 1
    seed_drawn: bool = False
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    noise: Literal["torch-cpu", "dln1"] = "torch-cpu"
    image: NDArray[np.uint8] | None = None
    image_sha256: str | None = None
    working_size: tuple[int, int] | None = None
    output: OutputOptions = field(default_factory=OutputOptions)
    deterministic: bool = False
    start_timeout_s: float = 120.0
    previews: bool = False
    model: str | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None

    def spec(self, index: int) -> SampleSpec:
        """The runtime spec of image ``index`` (seed + index)."""
        return SampleSpec(
            task=self.task,
            prompt=self.prompt,
            seed=self.seed + index,
            width=self.width,
            height=self.height,
            steps=self.steps,
            noise=self.noise,
            image=self.image,
            working_size=self.working_size,
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
        )

    def describe(self) -> dict[str, Any]:
        """The normalised request as JSON (no image bytes; the source is named by its pixel hash)."""
        out: dict[str, Any] = {
            "task": self.task,
            "prompt": self.prompt,
            "n": self.n,
            "seed": self.seed,
            "seed_drawn": self.seed_drawn,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "noise": self.noise,
            "guidance_scale": self.guidance_scale,
            "image_guidance_scale": self.image_guidance_scale,
            "output_format": self.output.format,
            "output_compression": self.output.quality,
            "response_format": self.output.response_format,
            "metadata": "embed" if self.output.embed_metadata else "strip",
            "deterministic": self.deterministic,
            "timeout_s": self.start_timeout_s,
            "previews": self.previews,
        }
        if self.task == "edit":
            out["image_sha256"] = self.image_sha256
            out["working_size"] = (
                None if self.working_size is None else f"{self.working_size[0]}x{self.working_size[1]}"
            )
        return out


@dataclass(frozen=True, slots=True)
class BatchKey:
    """What samples must share to ride in one batch. The task is deliberately not part of it.

    Attributes:
        backend: Runtime backend name.
        dtype: Compute dtype.
        width: Working width.
        height: Working height.
        steps: Denoising steps.
        guidance: Guidance mode (``none`` for the distilled mobile model).
        solo: Deterministic samples run alone (batch size 1).
    """

    backend: str
    dtype: str
    width: int
    height: int
    steps: int
    guidance: str
    solo: bool = False

    def label(self) -> str:
        """A short text form for logs."""
        return f"{self.backend}/{self.dtype}/{self.width}x{self.height}/s{self.steps}/{self.guidance}" + (
            "/solo" if self.solo else ""
        )


@dataclass(slots=True)
class EncodedImage:
    """One finished image of a job.

    Attributes:
        index: Image index within the job.
        seed: Its seed.
        data: The encoded file.
        format: ``png``, ``jpeg`` or ``webp``.
        width: Pixel width.
        height: Pixel height.
        rgb8_sha256: SHA-256 of the RGB8 pixels (format-independent).
        recipe: Everything that determined its bits.
    """

    index: int
    seed: int
    data: bytes
    format: ImageFormat
    width: int
    height: int
    rgb8_sha256: str
    recipe: dict[str, Any]

    @property
    def media_type(self) -> str:
        """``image/png`` …."""
        return MEDIA_TYPES[self.format]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A job's failure, in the error envelope's terms."""

    type: str
    code: str
    message: str
    status_code: int
    param: str | None = None

    def to_body(self) -> dict[str, Any]:
        """``{"type", "code", "message", "param"}``."""
        return {"type": self.type, "code": self.code, "message": self.message, "param": self.param}


@dataclass(slots=True, eq=False)
class Job:
    """One unit of work and everything known about it.

    Attributes:
        id: ``job_…`` identifier.
        request: The validated request.
        owner: Hash of the API key that created it (jobs are visible to their owner only).
        mode: ``sync``, ``async`` or ``ws``.
        key: The batch key of its samples.
        fingerprint: Hash of the raw request (for Idempotency-Key conflicts).
        idempotency_key: The client's Idempotency-Key, if any.
        status: Current status.
        created_at: Unix time of creation.
        started_at: Unix time its first batch started.
        completed_at: Unix time it reached a terminal status.
        deadline: Monotonic time by which it must start.
        batch_size: Size of the (largest) batch its samples ran in.
        step: Steps finished by its current batch.
        total_steps: Steps per image.
        pending: Sample indices not yet dispatched to a batch.
        images: Finished images by index.
        error: The failure, for failed jobs.
        timings: Seconds per stage (queue, text_encode, vae_encode, denoise, decode, image_encode, total).
        cancel_flag: Set to stop its samples between steps.
    """

    id: str
    request: JobRequest
    owner: str
    mode: JobMode
    key: BatchKey
    fingerprint: str = ""
    idempotency_key: str | None = None
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    created_mono: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    started_mono: float | None = None
    completed_at: float | None = None
    deadline: float = float("inf")
    batch_size: int = 0
    step: int = 0
    total_steps: int = 0
    pending: list[int] = field(default_factory=list)
    images: dict[int, EncodedImage] = field(default_factory=dict)
    error: ErrorInfo | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    samples_done: int = 0

    @property
    def task(self) -> Task:
        """The request's task."""
        return self.request.task


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One sample of one job, as the batcher hands it to the runner."""

    job: Job
    index: int

    @property
    def spec(self) -> SampleSpec:
        """The runtime spec of this sample."""
        return self.job.request.spec(self.index)
