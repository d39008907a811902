"""Client wire types: the server's responses and events, as the client sees them.

These mirror ``server/api/protocol.py`` without importing it (a client install must not pull FastAPI or
torch); ``tests/unit/clients/test_wire_contract.py`` keeps the two in step. Unknown fields are allowed, so
a newer server does not break an older client.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(_Wire):
    """The OpenAI error object."""

    type: str
    code: str | None = None
    message: str
    param: str | None = None


class ImageData(_Wire):
    """One image: the file (inline or by URL), its seed, pixel hash and recipe."""

    b64_json: str | None = None
    url: str | None = None
    index: int
    seed: int
    width: int
    height: int
    rgb8_sha256: str
    finish_reason: str = "success"
    recipe: dict[str, Any]

    def bytes(self) -> bytes:
        """The encoded file (``b64_json`` responses only).

        Raises:
            ValueError: The response carried a URL instead.
        """
        if self.b64_json is None:
            raise ValueError("this image was returned by URL; fetch it with jobs.image()")
        return base64.b64decode(self.b64_json)


class Usage(_Wire):
    """Work done."""

    images: int
    steps: int


class ImagesResponse(_Wire):
    """A finished job's images."""

    id: str
    object: str = "images.response"
    created: int
    model: str
    data: list[ImageData]
    output_format: str
    size: str
    batch_size: int
    usage: Usage
    timings_ms: dict[str, float]


class Progress(_Wire):
    """Where a running job is."""

    step: int
    total_steps: int
    images_done: int
    n: int


class JobUrls(_Wire):
    """Where to act on a job."""

    self: str
    cancel: str
    ws: str


class JobObject(_Wire):
    """A job: status, queue position, progress, and the result or error."""

    id: str
    object: str = "job"
    task: Literal["generate", "edit"]
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    queue_position: int | None = None
    batch_size: int = 0
    progress: Progress
    request: dict[str, Any]
    result: ImagesResponse | None = None
    error: ErrorBody | None = None
    urls: JobUrls

    @property
    def done(self) -> bool:
        """True for succeeded, failed and canceled."""
        return self.status in ("succeeded", "failed", "canceled")


TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.canceled")


class JobEvent(_Wire):
    """One WebSocket event: ``type``, ``job_id``, per-job ``seq``, ``ts`` and type-specific fields.

    Types: ``job.queued`` (queue_position, eta_ms), ``job.started`` (batch_size), ``job.progress``
    (step, total_steps), ``job.preview`` (index, step, format, data), ``job.image`` (index, seed,
    rgb8_sha256, b64_json | url), and exactly one terminal ``job.succeeded`` / ``job.failed`` (error) /
    ``job.canceled``. ``job.snapshot`` (job) replaces a replay that was already trimmed.
    """

    type: str
    job_id: str
    seq: int = 0
    ts: float = 0.0

    @property
    def terminal(self) -> bool:
        """True for the job's last event."""
        return self.type in TERMINAL_EVENTS


class ModelList(_Wire):
    """``GET /v1/models``."""

    object: str = "list"
    data: list[dict[str, Any]]
