"""Stage ① routes: ``/v1/generate``, ``/v1/edit`` and their OpenAI-compatible aliases.

Each route reads as: parse → validate → ``engine.submit`` → wait (sync) or 202 (async) → encode the
response. ``Prefer: respond-async`` returns 202 with the job object and a ``Location``; otherwise the
request waits, and a client that disconnects cancels its job. ``Idempotency-Key`` returns the existing
job for a repeated body and 409 for a different one. Sync responses carry ``Server-Timing``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from server.api.deps import EngineDep, OwnerDep, SettingsDep
from server.api.media import decode_base64_image, decode_upload
from server.api.protocol import (
    EditRequest,
    ErrorResponse,
    GenerateRequest,
    ImagesResponse,
    JobObject,
    images_response_of,
    job_object_of,
)
from server.api.validation import describe_pydantic_errors, fingerprint, validate_edit, validate_generation
from server.engine.interfaces import EngineClient
from server.engine.job import Job, JobRequest, JobStatus
from server.errors import (
    InvalidRequestError,
    JobCanceledError,
    UnsupportedMediaTypeError,
    error_from,
)
from server.observability.tracing import server_timing
from server.settings import ServerSettings

router = APIRouter(tags=["images"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (field, allowed values, given value)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    409: {
        "model": ErrorResponse,
        "description": "Idempotency-Key reused with a different body; job canceled.",
    },
    413: {"model": ErrorResponse, "description": "Upload or image too large."},
    503: {"model": ErrorResponse, "description": "Queue full or model not ready (see Retry-After)."},
    504: {"model": ErrorResponse, "description": "The job did not start before its start deadline."},
}
_ASYNC: dict[int | str, dict[str, Any]] = {
    202: {"model": JobObject, "description": "Accepted (`Prefer: respond-async`): the job object."}
}
_EDIT_FIELDS_NOTE = (
    "Multipart: `image` (file) plus the other fields as form fields; "
    "or JSON with `image` as base64 / a data URL."
)
_EDIT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/EditRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP"},
                        "prompt": {"type": "string"},
                        "n": {"type": "integer"},
                        "seed": {"type": "integer"},
                        "size": {"type": "string"},
                        "working_size": {"type": "string"},
                        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                        "response_format": {"type": "string", "enum": ["b64_json", "url"]},
                        "deterministic": {"type": "boolean"},
                    },
                }
            },
        },
    }
}
MAX_IDEMPOTENCY_KEY = 255


def base_url_of(request: Request, settings: ServerSettings) -> str:
    """Prefix for absolute URLs in responses."""
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


def served_model(engine: EngineClient) -> str | None:
    """The model id the engine serves (None before it is loaded)."""
    model = engine.describe().get("model_id")
    return None if model is None else str(model)


async def _disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read, so the next message is a disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _wait_sync(
    request: Request, engine: EngineClient, job: Job, *, cancel_on_disconnect: bool
) -> Job | None:
    waiter = asyncio.ensure_future(engine.wait(job))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, watcher):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    if waiter in done:
        return waiter.result()
    if cancel_on_disconnect:
        await engine.cancel(job.id, job.owner)
    return None


async def serve_job(
    request: Request,
    engine: EngineClient,
    settings: ServerSettings,
    owner: str,
    job_request: JobRequest,
    fp: str,
) -> Response:
    """Submit a validated job and answer sync (200 + images) or async (202 + job object).

    Raises:
        ServerError: Whatever the engine refused, or the job's failure.
    """
    prefer = request.headers.get("prefer", "").lower()
    respond_async = "respond-async" in prefer
    idem = request.headers.get("idempotency-key")
    if idem is not None and not 1 <= len(idem) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidRequestError.field(
            "Idempotency-Key", "must be 1 … 255 characters.", given=f"{len(idem)} characters"
        )
    job, created = await engine.submit(
        job_request,
        owner=owner,
        mode="async" if respond_async else "sync",
        fingerprint=fp,
        idempotency_key=idem,
    )
    base = base_url_of(request, settings)
    headers = {"X-Job-Id": job.id}
    if respond_async:
        position = await engine.queue_position(job.id)
        body = job_object_of(job, position, base).model_dump(mode="json")
        headers.update({"Location": f"/v1/jobs/{job.id}", "Preference-Applied": "respond-async"})
        return JSONResponse(body, status_code=202 if created else 200, headers=headers)
    finished = await _wait_sync(request, engine, job, cancel_on_disconnect=created)
    if finished is None:  # the client is gone; nobody reads this
        return Response(status_code=499)
    if finished.status == JobStatus.SUCCEEDED:
        headers["Server-Timing"] = server_timing(finished.timings)
        return JSONResponse(images_response_of(finished, base).model_dump(mode="json"), headers=headers)
    if finished.status == JobStatus.CANCELED:
        raise JobCanceledError(f"job `{finished.id}` was canceled before it finished", param="job_id")
    if finished.error is not None:
        error = error_from(
            finished.error.type, finished.error.message, param=finished.error.param, code=finished.error.code
        )
        error.counted = True  # type: ignore[attr-defined]  # the engine counted the job failure
        raise error
    raise error_from("internal_error", f"job `{finished.id}` ended as {finished.status}")


@router.post(
    "/v1/generate",
    response_model=ImagesResponse,
    responses={**_ASYNC, **_ERRORS},
    summary="Text → image (native)",
)
@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    responses={**_ASYNC, **_ERRORS},
    summary="Text → image (OpenAI Images compatible)",
)
async def generate(
    body: GenerateRequest, request: Request, settings: SettingsDep, engine: EngineDep, owner: OwnerDep
) -> Response:
    """Generate `n` images from a prompt. Image i uses seed + i; every image comes with its recipe.

    Headers: `Prefer: respond-async` (202 + job), `Idempotency-Key`, `Authorization: Bearer <key>`.
    """
    job_request = validate_generation(body, settings, served_model(engine))
    fp = fingerprint("generate", body.model_dump(exclude_none=True))
    return await serve_job(request, engine, settings, owner, job_request, fp)


async def _read_edit(request: Request, settings: ServerSettings) -> tuple[EditRequest, bytes]:
    ctype = request.headers.get("content-type", "").lower()
    limits = settings.limits
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        async with request.form(max_files=2, max_fields=64, max_part_size=256 * 1024) as form:
            if form.get("mask") is not None:
                raise InvalidRequestError.field(
                    "mask",
                    "is not supported: DreamLite edits follow the instruction, not a mask.",
                    allowed="omit it",
                )
            upload = form.get("image") or form.get("image[]")
            if not isinstance(upload, UploadFile):
                raise InvalidRequestError(
                    "`image` is required (a file part).", param="image", code="missing_field"
                )
            data = await upload.read()
            fields: dict[str, Any] = {
                k: v for k, v in form.multi_items() if k not in ("image", "image[]") and isinstance(v, str)
            }
        try:
            body = EditRequest.model_validate({**fields, "image": "multipart"})
        except ValidationError as err:
            raise describe_pydantic_errors(err.errors()) from err
        return body, data
    if ctype.startswith("application/json"):
        raw = await request.body()
        try:
            body = EditRequest.model_validate_json(raw)
        except ValidationError as err:
            raise describe_pydantic_errors(err.errors()) from err
        return body, decode_base64_image(body.image, max_bytes=limits.max_upload_bytes)
    raise UnsupportedMediaTypeError(
        f"`Content-Type` must be multipart/form-data or application/json. Given: {ctype or 'none'}.",
        param="Content-Type",
    )


@router.post(
    "/v1/edit",
    response_model=ImagesResponse,
    responses={
        **_ASYNC,
        **_ERRORS,
        415: {"model": ErrorResponse, "description": "Unsupported content type."},
    },
    openapi_extra=_EDIT_OPENAPI,
    summary="Image + instruction → image (native)",
    description=_EDIT_FIELDS_NOTE,
)
@router.post(
    "/v1/images/edits",
    response_model=ImagesResponse,
    responses={
        **_ASYNC,
        **_ERRORS,
        415: {"model": ErrorResponse, "description": "Unsupported content type."},
    },
    openapi_extra=_EDIT_OPENAPI,
    summary="Image + instruction → image (OpenAI Images compatible)",
    description=_EDIT_FIELDS_NOTE,
)
async def edit(request: Request, settings: SettingsDep, engine: EngineDep, owner: OwnerDep) -> Response:
    """Edit an image by instruction; same options and responses as generate."""
    body, data = await _read_edit(request, settings)
    limits = settings.limits
    pixels, image_sha = await run_in_threadpool(
        decode_upload, data, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_image_pixels
    )
    job_request = validate_edit(body, pixels, image_sha, settings, served_model(engine))
    fp = fingerprint("edit", body.model_dump(exclude={"image"}, exclude_none=True), image_sha)
    return await serve_job(request, engine, settings, owner, job_request, fp)
