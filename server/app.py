"""Stage ⓪ composition root: build the FastAPI app from settings (broker, metrics, runner, engine, routes).

``create_app(settings)`` wires everything; the model loads in the background at startup so ``/healthz``
answers at once and ``/readyz`` says 503 until the warm-up forward pass has run. Errors from every layer
become the OpenAI envelope here (FastAPI's own 422 validation errors become 400), and no client mistake
ever produces a 500 or a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import __version__
from server.api import routes_images, routes_jobs, routes_ops, routes_parity, routes_ws
from server.api.media import encode_output, encode_preview
from server.api.validation import describe_pydantic_errors, parse_size
from server.engine.engine import Engine
from server.engine.parity import ParityService
from server.engine.runner import Runner, RuntimeLoader, load_runtime
from server.errors import PayloadTooLargeError, ServerError
from server.observability.metrics import Metrics
from server.observability.tracing import new_request_id, request_id_var
from server.scaleout.factory import create_broker
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DESCRIPTION = """
DreamLite serving API: text-to-image **and** instruction image editing from one unified model.
Generate and edit requests of the same working size ride in the **same UNet batch**.

* Sync by default; `Prefer: respond-async` → `202` + job object; `GET /v1/jobs/{id}`; cancel by id.
* `Idempotency-Key` returns the existing job (409 if the body differs).
* `WS /v1/ws`: typed job events with per-job `seq`, exactly one terminal event, replay with `since_seq`.
* Every image comes with its recipe (seed, noise, steps, sigmas, sizes, backend, dtype, weights hash,
  batch size, RGB8 sha256), embedded in PNGs as `dreamlite:recipe` unless `metadata: "strip"`.
* Errors use the OpenAI envelope `{"error": {"type", "code", "message", "param"}}`.
"""


class _RequestTooLargeError(Exception):
    pass


class EdgeMiddleware:
    """Pure ASGI middleware: request ids, HTTP metrics and the request-body size limit.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``) keeps ``receive`` intact, which the sync routes
    rely on to notice a client disconnect.

    Args:
        app: The wrapped app.
        metrics: Where to count requests.
        max_body_bytes: Largest request body accepted (413 above).
        parity_max_body_bytes: The limit for ``/v1/parity/*`` (device traces carry tensors).
    """

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, parity_max_body_bytes: int | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.parity_max_body_bytes = parity_max_body_bytes or max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id", "")[:64] or new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
                self.metrics.http_duration.labels(route=_route_of(scope), method=scope["method"]).observe(
                    time.perf_counter() - started
                )
            await send(message)

        received = 0
        limit = (
            self.parity_max_body_bytes
            if str(scope.get("path", "")).startswith("/v1/parity/")
            else self.max_body_bytes
        )

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _RequestTooLargeError
            return message

        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _send_error(send_wrapper, _too_large(limit))
                return
            try:
                await self.app(scope, receive_wrapper, send_wrapper)
            except _RequestTooLargeError:
                await _send_error(send_wrapper, _too_large(limit))
        finally:
            self.metrics.http_requests.labels(
                route=_route_of(scope), method=scope["method"], code=str(status["code"])
            ).inc()
            request_id_var.reset(token)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the request body is larger than {limit} bytes", code="body_too_large")


async def _send_error(send: Send, error: ServerError) -> None:
    response = JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers())
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def _warmup_size(settings: ServerSettings) -> tuple[int, int] | bool | None:
    if not settings.model.warmup:
        return False
    if settings.model.warmup_size:
        return parse_size(settings.model.warmup_size, "model.warmup_size")
    return None


def create_app(
    settings: ServerSettings | None = None,
    *,
    runtime_loader: RuntimeLoader | None = None,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app.

    Args:
        settings: Server settings (default: read from the environment).
        runtime_loader: Builds the runtime from the prompt-feature cache (default: load the model the
            settings name). Tests pass one that reuses an already loaded backend.
        on_load_failure: Called if the model cannot be loaded (the CLI stops uvicorn then).

    Returns:
        The FastAPI app; its lifespan starts and stops the engine.
    """
    settings = settings if settings is not None else ServerSettings()
    metrics = Metrics()
    loader: RuntimeLoader = runtime_loader or partial(load_runtime, settings.model)

    def on_lookup(hit: bool) -> None:
        metrics.prompt_cache.labels(result="hit" if hit else "miss").inc()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = create_broker(settings)
        runner = Runner(
            loader,
            cache_entries=settings.model.prompt_cache_entries,
            on_cache_lookup=on_lookup,
            warmup_size=_warmup_size(settings),
        )
        engine = Engine(
            settings=settings,
            broker=broker,
            runner=runner,
            metrics=metrics,
            encoder=encode_output,
            preview_encoder=encode_preview,
            on_load_failure=on_load_failure,
        )
        app.state.engine = engine
        parity_bundle = settings.parity.effective_bundle(settings.model)
        app.state.parity = (
            ParityService(
                parity_bundle,
                settings.parity.executors,
                cache_entries=settings.parity.cache_entries,
                max_jobs=settings.parity.max_jobs,
                on_report=metrics.observe_parity,
            )
            if parity_bundle is not None
            else None
        )
        await engine.start()
        try:
            yield
        finally:
            if app.state.parity is not None:
                await app.state.parity.close()
            await engine.close()

    app = FastAPI(
        title="DreamLite API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "images", "description": "Generate and edit (native and OpenAI-compatible)."},
            {"name": "jobs", "description": "Job status, cancel and image files."},
            {"name": "websocket", "description": "Job events over `WS /v1/ws`."},
            {"name": "ops", "description": "Probes, metrics, models."},
            {
                "name": "parity",
                "description": "Phone ↔ server parity: reference traces, verification reports.",
            },
        ],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    for module in (routes_images, routes_jobs, routes_ops, routes_ws, routes_parity):
        app.include_router(module.router)
    _install_error_handlers(app, metrics)
    max_body = settings.limits.max_upload_bytes * 4 // 3 + 1024 * 1024
    parity_body = settings.parity.max_upload_bytes * 4 // 3 + 1024 * 1024
    app.add_middleware(
        EdgeMiddleware, metrics=metrics, max_body_bytes=max_body, parity_max_body_bytes=parity_body
    )
    return app


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def respond(error: ServerError) -> JSONResponse:
        if not getattr(error, "counted", False):
            metrics.failures.labels(error_type=error.error_type).inc()
        return JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers())

    async def on_server_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServerError)
        return respond(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return respond(describe_pydantic_errors(list(exc.errors())))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        body = {"error": {"type": kind, "code": kind, "message": str(exc.detail), "param": None}}
        metrics.failures.labels(error_type=kind).inc()
        return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return respond(ServerError("internal server error", code="internal_error"))

    app.add_exception_handler(ServerError, on_server_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
