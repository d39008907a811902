"""Stage ①⑧ routes: parity mode — did the phone compute what the server computes?

* ``GET /v1/parity/manifest`` — the bundle manifest, the DLN-1 golden vectors, executors, tolerances.
* ``POST /v1/parity/reference`` — 202 + job: the reference trace of a canonical request on an executor
  (the HTP emulator for a target, or the CPU EP), cached by (request_id, executor, bundle id).
* ``POST /v1/parity/verify`` — a canonical request + the device's trace (optionally its tensors) → a report:
  a verdict per stage and overall, the first divergent stage, errors, environment differences, and with
  ``replay: true`` a rerun of the first divergent stage from the device's own inputs. Synchronous by
  default; ``Prefer: respond-async`` → 202 + job.
* ``GET /v1/parity/jobs/{id}`` (+ ``/tensors``, ``/report.html``).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from model_runtime.parity.canonical import CanonicalRequest
from model_runtime.parity.compare import ParityReport, Tolerances
from model_runtime.parity.report_html import render_report
from model_runtime.parity.trace import ParityTrace
from server.api.deps import OwnerDep, SettingsDep
from server.api.media import decode_base64_image, decode_upload
from server.api.protocol import ErrorResponse
from server.errors import InvalidRequestError, NotReadyError

if TYPE_CHECKING:  # the service lives in the engine layer; routes only reach it through app.state
    from server.engine.parity import ParityJob, ParityService

router = APIRouter(tags=["parity"])


class ParityReferenceBody(BaseModel):
    """Ask for the reference trace of a canonical request."""

    model_config = ConfigDict(extra="forbid")

    request: CanonicalRequest
    executor: str | None = Field(
        default=None, description="qnn:<target>[/<precision>] or onnx:<precision>; default: the first"
    )
    edit_image_b64: str | None = Field(default=None, description="the edit source (base64 PNG/JPEG/WebP)")


class ParityVerifyBody(BaseModel):
    """A device's trace of a canonical request, to be compared with the server's reference."""

    model_config = ConfigDict(extra="forbid")

    request: CanonicalRequest
    device_trace: ParityTrace
    device_tensors_npz_b64: str | None = Field(
        default=None, description="the device's stage tensors (.npz, base64)"
    )
    edit_image_b64: str | None = Field(default=None, description="the edit source (base64 PNG/JPEG/WebP)")
    executor: str | None = None
    replay: bool = Field(
        default=False, description="rerun the first divergent stage from the device's inputs"
    )
    tolerances: Tolerances | None = Field(
        default=None, description="override the bundle's declared tolerances"
    )


def get_parity(request: Request) -> ParityService:
    """The app's parity service.

    Raises:
        NotReadyError: Parity mode is not configured (no bundle).
    """
    service: ParityService | None = getattr(request.app.state, "parity", None)
    if service is None:
        raise NotReadyError(
            "parity mode is off: serve a bundle (--backend onnx|qnn --bundle DIR) "
            "or set DREAMLITE_PARITY__BUNDLE",
            code="parity_not_configured",
            retry_after_s=3600,
        )
    return service


def _edit_image(body_image: str | None, request: CanonicalRequest, settings: Any) -> bytes | None:
    if request.task != "edit":
        if body_image is not None:
            raise InvalidRequestError.field(
                "edit_image_b64", "is only used by edit requests.", given="an image"
            )
        return None
    if body_image is None:
        raise InvalidRequestError.field("edit_image_b64", "is required for an edit request.", given=None)
    data = decode_base64_image(body_image, max_bytes=settings.limits.max_upload_bytes, param="edit_image_b64")
    _, sha = decode_upload(
        data,
        max_bytes=settings.limits.max_upload_bytes,
        max_pixels=settings.limits.max_image_pixels,
        param="edit_image_b64",
    )
    assert request.edit_image is not None
    if sha != request.edit_image.rgb8_sha256:
        raise InvalidRequestError.field(
            "edit_image_b64",
            "does not match request.edit_image.rgb8_sha256.",
            allowed=request.edit_image.rgb8_sha256,
            given=sha,
        )
    return data


def _json(job: ParityJob, status: int) -> JSONResponse:
    return JSONResponse(job.to_dict(), status_code=status, headers={"Location": f"/v1/parity/jobs/{job.id}"})


@router.get(
    "/v1/parity/manifest",
    summary="Bundle manifest, noise golden vectors, executors and tolerances",
    responses={503: {"model": ErrorResponse}},
)
async def parity_manifest(request: Request, owner: OwnerDep) -> dict[str, Any]:
    """What a phone app and QA need to produce comparable traces."""
    return get_parity(request).manifest()


@router.post(
    "/v1/parity/reference",
    status_code=202,
    summary="Reference trace of a canonical request (async job)",
    responses={400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def parity_reference(
    body: ParityReferenceBody, request: Request, settings: SettingsDep, owner: OwnerDep
) -> JSONResponse:
    """202 + job; poll ``GET /v1/parity/jobs/{id}`` for the trace (and ``…/tensors`` for the npz)."""
    service = get_parity(request)
    image = _edit_image(body.edit_image_b64, body.request, settings)
    job = service.submit_reference(
        owner, body.request.canonical_json().decode(), body.request.request_id, image, body.executor
    )
    return _json(job, 202)


@router.post(
    "/v1/parity/verify",
    summary="Verify a device trace against the server's reference",
    response_model=ParityReport,
    responses={202: {"description": "Accepted (`Prefer: respond-async`)"}, 400: {"model": ErrorResponse}},
)
async def parity_verify(
    body: ParityVerifyBody,
    request: Request,
    settings: SettingsDep,
    owner: OwnerDep,
    prefer: Annotated[str | None, Header()] = None,
) -> Any:
    """Per-stage verdicts, the first divergent stage, errors and environment differences."""
    service = get_parity(request)
    if body.device_trace.request_id != body.request.request_id:
        raise InvalidRequestError.field(
            "device_trace.request_id",
            "does not match the request.",
            allowed=body.request.request_id,
            given=body.device_trace.request_id,
        )
    tensors = None
    if body.device_tensors_npz_b64 is not None:
        try:
            tensors = base64.b64decode(body.device_tensors_npz_b64, validate=True)
        except (binascii.Error, ValueError) as err:
            raise InvalidRequestError.field("device_tensors_npz_b64", "is not valid base64.") from err
    image = _edit_image(body.edit_image_b64, body.request, settings)
    job = service.submit_verify(
        owner,
        body.request.canonical_json().decode(),
        body.request.request_id,
        body.device_trace.model_dump_json(),
        tensors,
        image,
        body.executor,
        body.replay,
        body.tolerances.model_dump_json() if body.tolerances is not None else None,
    )
    if prefer and "respond-async" in prefer:
        return _json(job, 202)
    await job.done.wait()
    if job.error is not None:
        raise job.error
    assert job.result is not None
    return job.result["report"]


@router.get("/v1/parity/jobs/{job_id}", summary="A parity job", responses={404: {"model": ErrorResponse}})
async def parity_job(job_id: str, request: Request, owner: OwnerDep) -> dict[str, Any]:
    """Status; for reference jobs the trace, for verify jobs the report."""
    return get_parity(request).get(job_id, owner).to_dict()


@router.get("/v1/parity/jobs/{job_id}/tensors", summary="Reference tensors (.npz)", response_class=Response)
async def parity_tensors(job_id: str, request: Request, owner: OwnerDep) -> Response:
    """The reference job's stage tensors as an ``.npz`` file."""
    job = get_parity(request).get(job_id, owner)
    data = (job.result or {}).get("tensors_npz")
    if not isinstance(data, bytes):
        raise InvalidRequestError.field(
            "job_id", "has no tensors (not a finished reference job).", given=job_id
        )
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{job.request_id}.npz"'},
    )


def _npy(data: Any) -> np.ndarray | None:
    if not isinstance(data, bytes):
        return None
    loaded: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    return loaded


@router.get(
    "/v1/parity/jobs/{job_id}/report.html", summary="HTML report of a verify job", response_class=HTMLResponse
)
async def parity_report_html(job_id: str, request: Request, owner: OwnerDep) -> HTMLResponse:
    """Side-by-side images, the per-stage table and a difference heat map."""
    job = get_parity(request).get(job_id, owner)
    if job.kind != "verify" or job.result is None:
        raise InvalidRequestError.field("job_id", "has no report (not a finished verify job).", given=job_id)
    report = ParityReport.model_validate(job.result["report"])
    page = render_report(
        report, _npy(job.result.get("reference_image")), _npy(job.result.get("device_image"))
    )
    return HTMLResponse(page)
