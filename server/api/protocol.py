"""Stage ① wire types: request and response bodies of the HTTP and WebSocket API (pydantic, at the edge).

The image routes speak the OpenAI Images shapes (``prompt``, ``n``, ``size: "WxH"``, ``response_format``,
``output_format``, ``output_compression``; response ``{created, data: [{b64_json | url}]}``) and extend
them with validated DreamLite fields (``seed``, ``steps``, ``noise``, ``deterministic``, ``metadata``,
``timeout_s``, ``previews``) and per-image facts (``seed``, ``rgb8_sha256``, ``recipe``). Unknown fields
are rejected (400), never passed through silently.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.engine.job import Job, JobStatus

SEED_MAX = 2**64 - 1

_GENERATE_EXAMPLE: dict[str, Any] = {
    "prompt": "a lighthouse on a cliff at dawn, watercolor",
    "size": "1024x1024",
    "n": 1,
    "seed": 42,
    "output_format": "png",
}
_EDIT_EXAMPLE: dict[str, Any] = {
    "prompt": "make the sky purple",
    "image": "data:image/png;base64,iVBORw0KGgo...",
    "seed": 7,
}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ImageOptions(_Wire):
    """Fields shared by generate and edit."""

    prompt: str = Field(description="The prompt (generate) or the edit instruction (edit).")
    model: str | None = Field(default=None, description="Model id from /v1/models (default: the served one).")
    n: int = Field(default=1, description="Number of images; image i uses seed + i.")
    seed: int | None = Field(
        default=None,
        description="Initial-noise seed 0 … 2**64-1. Omitted or null: the server draws one and returns it.",
    )
    steps: int | None = Field(default=None, description="Denoising steps (default: the model's, 4).")
    guidance_scale: float | None = Field(
        default=None,
        description="Text guidance (DreamLite-base only; the distilled mobile model runs without guidance "
        "and rejects it). Default: the model's (base: 3.5).",
    )
    image_guidance_scale: float | None = Field(
        default=None,
        description="Image guidance for edits (DreamLite-base only). Default: the model's (1.0).",
    )
    noise: Literal["torch-cpu", "dln1"] = Field(
        default="torch-cpu",
        description="Noise source: torch-cpu (bit-identical to the official seeds) or dln1 (portable).",
    )
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json",
        description="b64_json: the file inline; url: a link to GET /v1/jobs/{id}/images/{index} "
        "(valid while the job is retained).",
    )
    output_format: Literal["png", "jpeg", "webp"] = Field(default="png", description="Image file format.")
    output_compression: int | None = Field(
        default=None, description="JPEG/WebP quality 0–100 (default 95); PNG is lossless and ignores it."
    )
    metadata: Literal["embed", "strip"] = Field(
        default="embed", description="embed: the recipe as PNG text metadata (dreamlite:recipe); strip: none."
    )
    deterministic: bool = Field(
        default=False,
        description="Run every image solo (batch size 1): its bits never depend on other queued work and "
        "equal `dreamlite generate` for the same request.",
    )
    timeout_s: float | None = Field(
        default=None, description="Start deadline in seconds: a job not started by then fails with 504."
    )
    previews: bool = Field(
        default=False, description="Emit low-resolution job.preview events after each step."
    )
    user: str | None = Field(
        default=None, description="End-user id (OpenAI compatibility; only logged as a hash)."
    )
    quality: Literal["auto", "standard"] | None = Field(
        default=None, description="OpenAI compatibility; only `auto`/`standard` (no effect)."
    )
    background: Literal["auto", "opaque"] | None = Field(
        default=None, description="OpenAI compatibility; transparent backgrounds are not supported."
    )


class GenerateRequest(_ImageOptions):
    """``POST /v1/generate`` and ``POST /v1/images/generations``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_GENERATE_EXAMPLE]})

    size: str | None = Field(
        default=None, description='"WIDTHxHEIGHT" (multiples of 32) or "auto" (the model default).'
    )
    width: int | None = Field(default=None, description="Output width (alternative to `size`).")
    height: int | None = Field(default=None, description="Output height (alternative to `size`).")


class EditRequest(_ImageOptions):
    """``POST /v1/edit`` and ``POST /v1/images/edits`` as JSON (multipart carries the same fields)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EDIT_EXAMPLE]})

    image: str = Field(description="The source image: base64 or a data URL (PNG, JPEG or WebP).")
    mask: str | None = Field(
        default=None, description="Not supported by DreamLite (instruction edits); rejected."
    )
    size: str | None = Field(
        default=None, description='Output "WIDTHxHEIGHT" or "auto" (default: the source size).'
    )
    working_size: str | None = Field(
        default=None, description='"WIDTHxHEIGHT" the model computes at (default: the model\'s, 1024x1024).'
    )


class ErrorBody(_Wire):
    """The OpenAI error object."""

    type: str = Field(description="Stable error type (also the metric label and the client class).")
    code: str | None = Field(default=None, description="Finer machine-readable code.")
    message: str = Field(description="What went wrong: the field, the allowed values, the given value.")
    param: str | None = Field(default=None, description="The request field at fault.")


class ErrorResponse(_Wire):
    """``{"error": {...}}``."""

    error: ErrorBody


class ImageData(_Wire):
    """One image of a response."""

    b64_json: str | None = Field(default=None, description="The file, base64 (response_format b64_json).")
    url: str | None = Field(default=None, description="Where to GET the file (response_format url).")
    index: int = Field(description="Image index within the job.")
    seed: int = Field(description="Its seed (request seed + index).")
    width: int
    height: int
    rgb8_sha256: str = Field(description="SHA-256 of the decoded RGB8 pixels (format-independent).")
    finish_reason: Literal["success"] = "success"
    recipe: dict[str, Any] = Field(description="Everything that determined the image's bits.")


class Usage(_Wire):
    """Work done."""

    images: int
    steps: int


class ImagesResponse(_Wire):
    """A finished job's images (a superset of OpenAI's ``ImagesResponse``)."""

    id: str = Field(description="The job id.")
    object: Literal["images.response"] = "images.response"
    created: int = Field(description="Unix time the job was created.")
    model: str
    data: list[ImageData]
    output_format: str
    size: str = Field(description="Output WIDTHxHEIGHT.")
    batch_size: int = Field(description="Images in the largest UNet batch the job's images ran in.")
    usage: Usage
    timings_ms: dict[str, float] = Field(
        description="queue, text_encode, denoise, decode, image_encode, total."
    )


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
    """``GET /v1/jobs/{id}``, and the 202 body of an async request."""

    id: str
    object: Literal["job"] = "job"
    task: Literal["generate", "edit"]
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    queue_position: int | None = Field(default=None, description="Jobs ahead of this one (0 = next).")
    batch_size: int = 0
    progress: Progress
    request: dict[str, Any] = Field(description="The normalised request (no image bytes).")
    result: ImagesResponse | None = None
    error: ErrorBody | None = None
    urls: JobUrls


class ModelCard(_Wire):
    """One served model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dreamlite"
    details: dict[str, Any] = Field(description="Backend, dtype, sizes, steps, weights hash, batching.")


class ModelList(_Wire):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------- WebSocket (client → server)
class WsSubscribe(_Wire):
    """Follow jobs; ``since_seq`` replays events after that sequence number (0: all)."""

    type: Literal["subscribe"]
    job_ids: list[str] = Field(min_length=1, max_length=100)
    since_seq: int | dict[str, int] = 0


class WsUnsubscribe(_Wire):
    """Stop following jobs."""

    type: Literal["unsubscribe"]
    job_ids: list[str]


class WsCancel(_Wire):
    """Cancel a job by id."""

    type: Literal["cancel"]
    job_id: str


class WsSubmit(_Wire):
    """Create a job over the socket and follow it; replies ``submitted`` with the job id."""

    type: Literal["submit"]
    task: Literal["generate", "edit"]
    request: dict[str, Any] = Field(description="A GenerateRequest or EditRequest body (JSON, base64 image).")
    client_ref: str | None = Field(default=None, max_length=200, description="Echoed in `submitted`.")
    idempotency_key: str | None = Field(default=None, max_length=200)


class WsPing(_Wire):
    """Keep-alive; answered with ``pong``."""

    type: Literal["ping"]


WsClientMessage = Annotated[
    WsSubscribe | WsUnsubscribe | WsCancel | WsSubmit | WsPing, Field(discriminator="type")
]


class WsEnvelope(BaseModel):
    """Parses one client frame."""

    message: WsClientMessage


# ---------------------------------------------------------------- job → wire
def images_response_of(job: Job, base_url: str) -> ImagesResponse:
    """The images of a finished job as the response body.

    Args:
        job: A job with images.
        base_url: Prefix for ``url`` responses (no trailing slash).
    """
    request = job.request
    data: list[ImageData] = []
    for index in sorted(job.images):
        image = job.images[index]
        inline = request.output.response_format == "b64_json"
        data.append(
            ImageData(
                b64_json=base64.b64encode(image.data).decode() if inline else None,
                url=None if inline else f"{base_url}/v1/jobs/{job.id}/images/{index}",
                index=index,
                seed=image.seed,
                width=image.width,
                height=image.height,
                rgb8_sha256=image.rgb8_sha256,
                recipe=image.recipe,
            )
        )
    first = data[0] if data else None
    return ImagesResponse(
        id=job.id,
        created=int(job.created_at),
        model=str(first.recipe.get("model_id")) if first else (request.model or ""),
        data=data,
        output_format=request.output.format,
        size=f"{first.width}x{first.height}" if first else "",
        batch_size=job.batch_size,
        usage=Usage(images=len(data), steps=job.total_steps * len(data)),
        timings_ms={k: round(v * 1000.0, 1) for k, v in job.timings.items()},
    )


def job_object_of(job: Job, queue_position: int | None, base_url: str) -> JobObject:
    """The job object (status, progress, result or error, URLs)."""
    result = images_response_of(job, base_url) if job.status == JobStatus.SUCCEEDED else None
    error = None
    if job.error is not None:
        error = ErrorBody(
            type=job.error.type, code=job.error.code, message=job.error.message, param=job.error.param
        )
    ws_base = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return JobObject(
        id=job.id,
        task=job.task,
        status=job.status.value,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        queue_position=queue_position,
        batch_size=job.batch_size,
        progress=Progress(
            step=job.step, total_steps=job.total_steps, images_done=len(job.images), n=job.request.n
        ),
        request=job.request.describe(),
        result=result,
        error=error,
        urls=JobUrls(
            self=f"{base_url}/v1/jobs/{job.id}",
            cancel=f"{base_url}/v1/jobs/{job.id}/cancel",
            ws=f"{ws_base}/v1/ws",
        ),
    )
