"""Stage ⑧ routes: probes, metrics and the model list.

``/healthz`` says the process is alive (never touches the model). ``/readyz`` is deep: 503 with
``Retry-After`` until the model is loaded *and* a real warm-up forward pass has run. ``/metrics`` is the
Prometheus exposition of this app's registry. ``/v1/models`` lists the served model (OpenAI list shape).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Response

from server.api.deps import EngineDep, MetricsDep, OwnerDep, require_metrics_access
from server.api.protocol import ErrorResponse, ModelCard, ModelList
from server.errors import NotReadyError
from server.observability.metrics import CONTENT_TYPE

router = APIRouter(tags=["ops"])
_STARTED = int(time.time())


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """Always 200 while the process serves HTTP."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness (deep)",
    responses={503: {"model": ErrorResponse, "description": "Loading or warming up; see Retry-After."}},
)
async def readyz(engine: EngineDep) -> dict[str, Any]:
    """200 once the model is loaded and warmed; 503 + Retry-After before (or if loading failed)."""
    if not engine.ready:
        load_error = getattr(engine, "load_error", None)
        if load_error is not None:
            raise NotReadyError(
                f"the model failed to load: {load_error}", code="model_load_failed", retry_after_s=30
            )
        raise NotReadyError("the model is loading or warming up", code="not_ready", retry_after_s=2)
    facts = engine.describe()
    return {"status": "ready", "model": facts.get("model_id"), "backend": facts.get("backend")}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(require_metrics_access)],
)
async def metrics(registry: MetricsDep) -> Response:
    """The text exposition format (prefix `dreamlite_`)."""
    return Response(content=registry.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models", response_model=ModelList, summary="Served models")
async def models(engine: EngineDep, owner: OwnerDep) -> ModelList:
    """The served model with its backend, dtype, sizes, steps, weights hash and batching settings."""
    facts = engine.describe()
    model_id = str(facts.get("model_id") or "loading")
    return ModelList(data=[ModelCard(id=model_id, created=_STARTED, details=facts)])
