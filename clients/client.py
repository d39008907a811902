"""The DreamLite clients: :class:`DreamLite` (sync) and :class:`AsyncDreamLite` (async), httpx based.

Example::

    from clients import DreamLite

    client = DreamLite("http://127.0.0.1:8000", api_key="sk-…")
    result = client.images.generate("a lighthouse at dawn", size="512x512", seed=42)
    open("out.png", "wb").write(result.data[0].bytes())

    job = client.images.edit("photo.png", "make it winter", wait=False)   # async job
    job = client.jobs.get(job.id, wait=30)

The async client adds :meth:`AsyncDreamLite.events`, an async iterator of typed WebSocket events with
replay from ``since_seq``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import httpx

from clients._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    RequestSpec,
    auth_headers,
    backoff_s,
    create_headers,
    drop_none,
    edit_spec,
    error_from_response,
)
from clients.errors import (
    ERROR_TYPES,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InternalServerError,
)
from clients.types import ImagesResponse, JobEvent, JobObject, ModelList

ImageFormat = Literal["png", "jpeg", "webp"]


def _generate_fields(prompt: str, options: dict[str, Any]) -> dict[str, Any]:
    return drop_none({"prompt": prompt, **options})


def _result(response: httpx.Response) -> ImagesResponse | JobObject:
    body = response.json()
    if body.get("object") == "job":
        return JobObject.model_validate(body)
    return ImagesResponse.model_validate(body)


class _SyncTransport:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        http_client: httpx.Client | None,
        sleep: Callable[[float], None],
    ) -> None:
        self.client = http_client or httpx.Client(base_url=base_url, timeout=timeout)
        self.headers = auth_headers(api_key)
        self.max_retries = max_retries
        self.sleep = sleep

    def send(self, spec: RequestSpec) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.client.request(
                    spec.method,
                    spec.path,
                    json=spec.json,
                    data=spec.data,
                    files=spec.files,
                    params=spec.params,
                    headers={**self.headers, **spec.headers},
                )
            except httpx.TimeoutException as err:
                if attempt > self.max_retries:
                    raise APITimeoutError(str(err)) from err
                self.sleep(backoff_s(attempt, None))
                continue
            except httpx.TransportError as err:
                if attempt > self.max_retries:
                    raise APIConnectionError(str(err)) from err
                self.sleep(backoff_s(attempt, None))
                continue
            if response.status_code < 400:
                return response
            error = error_from_response(response)
            if not error.retryable or attempt > self.max_retries:
                raise error
            self.sleep(backoff_s(attempt, error.retry_after_s))


class _AsyncTransport:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        http_client: httpx.AsyncClient | None,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.client = http_client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.headers = auth_headers(api_key)
        self.max_retries = max_retries
        self.sleep = sleep

    async def send(self, spec: RequestSpec) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.client.request(
                    spec.method,
                    spec.path,
                    json=spec.json,
                    data=spec.data,
                    files=spec.files,
                    params=spec.params,
                    headers={**self.headers, **spec.headers},
                )
            except httpx.TimeoutException as err:
                if attempt > self.max_retries:
                    raise APITimeoutError(str(err)) from err
                await self.sleep(backoff_s(attempt, None))
                continue
            except httpx.TransportError as err:
                if attempt > self.max_retries:
                    raise APIConnectionError(str(err)) from err
                await self.sleep(backoff_s(attempt, None))
                continue
            if response.status_code < 400:
                return response
            error: APIStatusError = error_from_response(response)
            if not error.retryable or attempt > self.max_retries:
                raise error
            await self.sleep(backoff_s(attempt, error.retry_after_s))


def _generate_spec(
    prompt: str, options: dict[str, Any], wait: bool, idempotency_key: str | None, path: str
) -> RequestSpec:
    return RequestSpec(
        "POST", path, json=_generate_fields(prompt, options), headers=create_headers(idempotency_key, wait)
    )


class Images:
    """``client.images``: generate and edit."""

    def __init__(self, transport: _SyncTransport) -> None:
        self._t = transport

    def generate(
        self,
        prompt: str,
        *,
        n: int = 1,
        size: str | None = None,
        seed: int | None = None,
        steps: int | None = None,
        noise: str | None = None,
        output_format: ImageFormat | None = None,
        response_format: Literal["b64_json", "url"] | None = None,
        metadata: str | None = None,
        deterministic: bool | None = None,
        timeout_s: float | None = None,
        wait: bool = True,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> ImagesResponse | JobObject:
        """Generate ``n`` images (image i uses seed + i).

        Args:
            prompt: The prompt.
            n: Number of images.
            size: ``"WxH"``.
            seed: Seed of image 0 (drawn by the server when omitted).
            steps: Denoising steps.
            noise: ``torch-cpu`` or ``dln1``.
            output_format: ``png``, ``jpeg`` or ``webp``.
            response_format: ``b64_json`` or ``url``.
            metadata: ``embed`` or ``strip``.
            deterministic: Run each image solo (bits independent of other work).
            timeout_s: Start deadline.
            wait: Block until done (else return the job object at once).
            idempotency_key: Reuse to make a retry attach to the same job.
            **extra: Further request fields.

        Returns:
            The images (``wait=True``) or the job object.

        Raises:
            APIStatusError: A typed subclass per error type.
        """
        options = {
            "n": n,
            "size": size,
            "seed": seed,
            "steps": steps,
            "noise": noise,
            "output_format": output_format,
            "response_format": response_format,
            "metadata": metadata,
            "deterministic": deterministic,
            "timeout_s": timeout_s,
            **extra,
        }
        return _result(self._t.send(_generate_spec(prompt, options, wait, idempotency_key, "/v1/generate")))

    def edit(
        self,
        image: bytes | str | Path,
        prompt: str,
        *,
        n: int = 1,
        size: str | None = None,
        working_size: str | None = None,
        seed: int | None = None,
        output_format: ImageFormat | None = None,
        deterministic: bool | None = None,
        wait: bool = True,
        idempotency_key: str | None = None,
        multipart: bool = True,
        **extra: Any,
    ) -> ImagesResponse | JobObject:
        """Edit an image by instruction (multipart upload, or JSON with base64 when ``multipart=False``).

        Returns:
            The images (``wait=True``) or the job object.

        Raises:
            APIStatusError: A typed subclass per error type.
        """
        fields = drop_none(
            {
                "prompt": prompt,
                "n": n,
                "size": size,
                "working_size": working_size,
                "seed": seed,
                "output_format": output_format,
                "deterministic": deterministic,
                **extra,
            }
        )
        spec = edit_spec(
            image, fields, create_headers(idempotency_key, wait), multipart=multipart, path="/v1/edit"
        )
        return _result(self._t.send(spec))


class Jobs:
    """``client.jobs``: status, cancel, files."""

    def __init__(self, transport: _SyncTransport) -> None:
        self._t = transport

    def get(self, job_id: str, *, wait: float | None = None) -> JobObject:
        """The job (long-polls up to ``wait`` seconds for it to finish)."""
        params = {"wait": wait} if wait else None
        return JobObject.model_validate(
            self._t.send(RequestSpec("GET", f"/v1/jobs/{job_id}", params=params)).json()
        )

    def cancel(self, job_id: str) -> JobObject:
        """Cancel by id (idempotent); returns the final state."""
        return JobObject.model_validate(self._t.send(RequestSpec("POST", f"/v1/jobs/{job_id}/cancel")).json())

    def image(self, job_id: str, index: int = 0) -> bytes:
        """One finished image file."""
        return self._t.send(RequestSpec("GET", f"/v1/jobs/{job_id}/images/{index}")).content

    def wait(self, job_id: str, *, timeout_s: float = 600.0) -> JobObject:
        """Poll until the job is done (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        job = self.get(job_id, wait=min(30.0, timeout_s))
        while not job.done and time.monotonic() < deadline:
            job = self.get(job_id, wait=min(30.0, max(0.1, deadline - time.monotonic())))
        return job


class DreamLite:
    """Synchronous client.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: Sent as ``Authorization: Bearer``.
        timeout: Seconds per HTTP call.
        max_retries: Retries of retryable failures.
        http_client: A preconfigured ``httpx.Client`` (its base URL is used).
        sleep: Injected for tests.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._t = _SyncTransport(base_url, api_key, timeout, max_retries, http_client, sleep)
        self.images = Images(self._t)
        self.jobs = Jobs(self._t)

    def models(self) -> ModelList:
        """``GET /v1/models``."""
        return ModelList.model_validate(self._t.send(RequestSpec("GET", "/v1/models")).json())

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._t.client.close()

    def __enter__(self) -> DreamLite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncImages:
    """``client.images`` of :class:`AsyncDreamLite`."""

    def __init__(self, transport: _AsyncTransport) -> None:
        self._t = transport

    async def generate(
        self, prompt: str, *, wait: bool = True, idempotency_key: str | None = None, **options: Any
    ) -> ImagesResponse | JobObject:
        """As :meth:`Images.generate` (options as keyword arguments)."""
        spec = _generate_spec(prompt, options, wait, idempotency_key, "/v1/generate")
        return _result(await self._t.send(spec))

    async def edit(
        self,
        image: bytes | str | Path,
        prompt: str,
        *,
        wait: bool = True,
        idempotency_key: str | None = None,
        multipart: bool = True,
        **options: Any,
    ) -> ImagesResponse | JobObject:
        """As :meth:`Images.edit` (options as keyword arguments)."""
        fields = drop_none({"prompt": prompt, **options})
        spec = edit_spec(
            image, fields, create_headers(idempotency_key, wait), multipart=multipart, path="/v1/edit"
        )
        return _result(await self._t.send(spec))


class AsyncJobs:
    """``client.jobs`` of :class:`AsyncDreamLite`."""

    def __init__(self, transport: _AsyncTransport) -> None:
        self._t = transport

    async def get(self, job_id: str, *, wait: float | None = None) -> JobObject:
        """The job (long-polls up to ``wait`` seconds)."""
        params = {"wait": wait} if wait else None
        response = await self._t.send(RequestSpec("GET", f"/v1/jobs/{job_id}", params=params))
        return JobObject.model_validate(response.json())

    async def cancel(self, job_id: str) -> JobObject:
        """Cancel by id (idempotent)."""
        response = await self._t.send(RequestSpec("POST", f"/v1/jobs/{job_id}/cancel"))
        return JobObject.model_validate(response.json())

    async def image(self, job_id: str, index: int = 0) -> bytes:
        """One finished image file."""
        return (await self._t.send(RequestSpec("GET", f"/v1/jobs/{job_id}/images/{index}"))).content


class AsyncDreamLite:
    """Asynchronous client (same surface as :class:`DreamLite`, plus :meth:`events`).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: Sent as ``Authorization: Bearer``.
        timeout: Seconds per HTTP call.
        max_retries: Retries of retryable failures.
        http_client: A preconfigured ``httpx.AsyncClient``.
        sleep: Injected for tests.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._t = _AsyncTransport(base_url, api_key, timeout, max_retries, http_client, sleep)
        self.images = AsyncImages(self._t)
        self.jobs = AsyncJobs(self._t)

    async def models(self) -> ModelList:
        """``GET /v1/models``."""
        return ModelList.model_validate((await self._t.send(RequestSpec("GET", "/v1/models"))).json())

    async def events(
        self, job_ids: list[str], *, since_seq: int | dict[str, int] = 0
    ) -> AsyncIterator[JobEvent]:
        """Typed events of the given jobs over ``WS /v1/ws``, until every job has had its terminal event.

        Args:
            job_ids: Jobs to follow.
            since_seq: Replay events after this ``seq`` (per job with a dict); 0 replays everything.

        Yields:
            :class:`JobEvent` (``event.type``, ``event.seq`` and the type's fields as attributes).

        Raises:
            APIStatusError: The server sent an error frame for one of the jobs.
        """
        from websockets.asyncio.client import connect

        url = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/ws"
        pending = set(job_ids)
        async with connect(url, additional_headers=auth_headers(self.api_key), max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "job_ids": job_ids, "since_seq": since_seq}))
            while pending:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "error":
                    error = frame.get("error", {})
                    cls = ERROR_TYPES.get(str(error.get("type")), InternalServerError)
                    raise cls(
                        str(error.get("message")),
                        status_code=0,
                        code=error.get("code"),
                        param=error.get("param"),
                    )
                if "job_id" not in frame:
                    continue
                event = JobEvent.model_validate(frame)
                yield event
                if event.terminal:
                    pending.discard(event.job_id)

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._t.client.aclose()

    async def __aenter__(self) -> AsyncDreamLite:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
