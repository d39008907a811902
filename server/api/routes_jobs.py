"""Stage ① routes: the job object — status (with long-poll), cancel by id, and raw image bytes.

Jobs are visible to the API key that created them only; anyone else gets the same 404 as for an unknown
id. Cancel is idempotent: a queued job leaves the queue, a running one stops at the next step boundary
(the other samples of its batch carry on), a finished one is returned unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from server.api.deps import EngineDep, OwnerDep, SettingsDep
from server.api.protocol import ErrorResponse, JobObject, job_object_of
from server.api.routes_images import base_url_of

router = APIRouter(tags=["jobs"])

CANCEL_WAIT_S = 10.0
_404: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown, expired or someone else's job."}
}
JobIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.get("/v1/jobs/{job_id}", response_model=JobObject, responses=_404, summary="Job status and result")
async def get_job(
    job_id: JobIdPath,
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    owner: OwnerDep,
    wait: Annotated[
        float,
        Query(ge=0, le=60, description="Long-poll: wait up to this many seconds for the job to finish."),
    ] = 0,
) -> Response:
    """The job object: status, queue position, progress, and the result or error."""
    job = await engine.get(job_id, owner)
    if wait > 0:
        job = await engine.wait(job, wait)
    position = await engine.queue_position(job.id)
    return JSONResponse(job_object_of(job, position, base_url_of(request, settings)).model_dump(mode="json"))


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobObject, responses=_404, summary="Cancel a job")
async def cancel_job(
    job_id: JobIdPath, request: Request, settings: SettingsDep, engine: EngineDep, owner: OwnerDep
) -> Response:
    """Cancel a queued or running job; returns its final state (idempotent)."""
    job = await engine.cancel(job_id, owner)
    job = await engine.wait(job, CANCEL_WAIT_S)
    position = await engine.queue_position(job.id)
    return JSONResponse(job_object_of(job, position, base_url_of(request, settings)).model_dump(mode="json"))


@router.get(
    "/v1/jobs/{job_id}/images/{index}",
    responses={**_404, 200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
    response_class=Response,
    summary="One finished image, as a file",
)
async def get_image(
    job_id: JobIdPath,
    index: Annotated[int, Path(ge=0, le=1024)],
    engine: EngineDep,
    owner: OwnerDep,
) -> Response:
    """The image file (the target of `url` responses), with its seed and pixel hash in headers."""
    job = await engine.get(job_id, owner)
    image = engine.image_of(job, index)
    return Response(
        content=image.data,
        media_type=image.media_type,
        headers={"X-Seed": str(image.seed), "X-RGB8-SHA256": image.rgb8_sha256, "Cache-Control": "private"},
    )
