"""Stage ① WebSocket: ``/v1/ws`` — subscribe to jobs, submit and cancel over one socket.

Client frames (JSON): ``subscribe {job_ids, since_seq}``, ``unsubscribe {job_ids}``, ``cancel {job_id}``,
``submit {task, request, client_ref?, idempotency_key?}``, ``ping``. Server frames: the job events
(``job.queued`` with ``queue_position``, ``job.started`` with ``batch_size``, ``job.progress`` step k/N,
``job.preview``, ``job.image``, then exactly one of ``job.succeeded`` / ``job.failed`` / ``job.canceled``),
each with ``job_id`` and a per-job ``seq``; plus ``submitted``, ``ack``, ``pong``, ``error`` and
``job.snapshot`` (sent when the replay asked for with ``since_seq`` was already trimmed).

Reconnecting with ``since_seq`` replays exactly the events after it. Jobs submitted over the socket keep
running if the socket closes (like async jobs); authentication is ``Authorization: Bearer`` or
``?api_key=`` (browsers cannot set headers on a WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from server.api.deps import get_engine, get_metrics, get_settings, require_ws_owner
from server.api.media import decode_base64_image, decode_upload
from server.api.protocol import (
    EditRequest,
    GenerateRequest,
    WsCancel,
    WsEnvelope,
    WsPing,
    WsSubmit,
    WsSubscribe,
    WsUnsubscribe,
    job_object_of,
)
from server.api.routes_images import served_model
from server.api.validation import describe_pydantic_errors, fingerprint, validate_edit, validate_generation
from server.engine.interfaces import EngineClient
from server.errors import AuthenticationError, InvalidRequestError, ServerError
from server.observability.metrics import Metrics
from server.settings import ServerSettings

router = APIRouter(tags=["websocket"])
logger = logging.getLogger(__name__)
MAX_FRAME_CHARS = 32 * 1024 * 1024


class _Session:
    """One WebSocket connection: its subscriptions and a send lock."""

    def __init__(
        self,
        websocket: WebSocket,
        engine: EngineClient,
        settings: ServerSettings,
        metrics: Metrics,
        owner: str,
    ) -> None:
        self.ws = websocket
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.owner = owner
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(frame))
        self.metrics.ws_events.labels(type=str(frame.get("type", "?"))).inc()

    async def send_error(self, error: ServerError, **extra: Any) -> None:
        await self.send({"type": "error", **extra, **error.to_body()})

    async def run(self) -> None:
        while True:
            text = await self.ws.receive_text()
            if len(text) > MAX_FRAME_CHARS:
                await self.send_error(InvalidRequestError("the frame is too large", code="frame_too_large"))
                continue
            try:
                envelope = WsEnvelope.model_validate({"message": json.loads(text)})
            except json.JSONDecodeError:
                await self.send_error(InvalidRequestError("the frame is not valid JSON", code="invalid_json"))
                continue
            except ValidationError as err:
                await self.send_error(describe_pydantic_errors(_strip_message(err.errors())))
                continue
            try:
                await self.handle(envelope.message)
            except ServerError as err:
                ref = getattr(envelope.message, "client_ref", None)
                job_id = getattr(envelope.message, "job_id", None)
                extra = {k: v for k, v in (("client_ref", ref), ("job_id", job_id)) if v is not None}
                await self.send_error(err, **extra)

    async def handle(self, message: WsSubscribe | WsUnsubscribe | WsCancel | WsSubmit | WsPing) -> None:
        if isinstance(message, WsPing):
            await self.send({"type": "pong"})
        elif isinstance(message, WsSubscribe):
            for job_id in message.job_ids:
                since = (
                    message.since_seq.get(job_id, 0)
                    if isinstance(message.since_seq, dict)
                    else message.since_seq
                )
                try:
                    await self.subscribe(job_id, since)
                except ServerError as err:
                    await self.send_error(err, job_id=job_id)
        elif isinstance(message, WsUnsubscribe):
            for job_id in message.job_ids:
                task = self.subscriptions.pop(job_id, None)
                if task is not None:
                    task.cancel()
            await self.send({"type": "ack", "op": "unsubscribe", "job_ids": message.job_ids})
        elif isinstance(message, WsCancel):
            job = await self.engine.cancel(message.job_id, self.owner)
            await self.send({"type": "ack", "op": "cancel", "job_id": job.id, "status": str(job.status)})
        else:
            await self.submit(message)

    async def subscribe(self, job_id: str, since_seq: int) -> None:
        job = await self.engine.get(job_id, self.owner)
        old = self.subscriptions.pop(job_id, None)
        if old is not None:
            old.cancel()
        oldest = await self.engine.oldest_seq(job_id)
        if since_seq + 1 < oldest:  # the asked-for replay was trimmed: send the state instead
            position = await self.engine.queue_position(job_id)
            snapshot = job_object_of(job, position, "").model_dump(mode="json")
            await self.send({"type": "job.snapshot", "job_id": job_id, "job": snapshot})
            since_seq = oldest - 1
        task = asyncio.create_task(self._follow(job_id, since_seq))
        self.subscriptions[job_id] = task

    async def _follow(self, job_id: str, since_seq: int) -> None:
        async with contextlib.aclosing(self.engine.events(job_id, since_seq)) as stream:
            async for event in stream:
                await self.send(event.to_wire())
        if self.subscriptions.get(job_id) is asyncio.current_task():
            del self.subscriptions[job_id]

    async def submit(self, message: WsSubmit) -> None:
        settings = self.settings
        model = served_model(self.engine)
        try:
            if message.task == "generate":
                gen = GenerateRequest.model_validate(message.request)
                job_request = validate_generation(gen, settings, model)
                fp = fingerprint("generate", gen.model_dump(exclude_none=True))
            else:
                edit = EditRequest.model_validate(message.request)
                data = decode_base64_image(edit.image, max_bytes=settings.limits.max_upload_bytes)
                pixels, sha = await run_in_threadpool(
                    decode_upload,
                    data,
                    max_bytes=settings.limits.max_upload_bytes,
                    max_pixels=settings.limits.max_image_pixels,
                )
                job_request = validate_edit(edit, pixels, sha, settings, model)
                fp = fingerprint("edit", edit.model_dump(exclude={"image"}, exclude_none=True), sha)
        except ValidationError as err:
            raise describe_pydantic_errors(err.errors()) from err
        job, _created = await self.engine.submit(
            job_request, owner=self.owner, mode="ws", fingerprint=fp, idempotency_key=message.idempotency_key
        )
        await self.send({"type": "submitted", "job_id": job.id, "client_ref": message.client_ref})
        await self.subscribe(job.id, 0)

    async def close(self) -> None:
        for task in self.subscriptions.values():
            task.cancel()
        for task in list(self.subscriptions.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _strip_message(errors: list[Any]) -> list[Any]:
    """Drop the synthetic ``message`` / union-tag prefix from WS frame validation errors."""
    out = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if loc[:1] == ("message",):
            loc = loc[2:] if len(loc) > 1 else loc[1:]
        out.append({**error, "loc": loc})
    return out


@router.websocket("/v1/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    """Job events over a WebSocket (see the module docstring for the frames)."""
    try:
        owner = require_ws_owner(websocket)
    except AuthenticationError as err:
        await websocket.close(code=err.ws_close_code, reason=err.message)
        return
    await websocket.accept()
    metrics = get_metrics(websocket)
    metrics.ws_connections.inc()
    session = _Session(websocket, get_engine(websocket), get_settings(websocket), metrics, owner)
    try:
        await session.run()
    except WebSocketDisconnect:
        pass
    finally:
        metrics.ws_connections.dec()
        await session.close()
