"""The client against httpx.MockTransport: request shapes, typed errors, retries honouring Retry-After."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from clients import (
    AsyncDreamLite,
    AuthenticationError,
    DreamLite,
    IdempotencyConflictError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
)
from clients.errors import APIConnectionError

IMAGES = {
    "id": "job_1",
    "object": "images.response",
    "created": 1,
    "model": "m",
    "output_format": "png",
    "size": "64x64",
    "batch_size": 2,
    "usage": {"images": 1, "steps": 4},
    "timings_ms": {"total": 1.0},
    "data": [
        {
            "b64_json": "UE5H",
            "index": 0,
            "seed": 7,
            "width": 64,
            "height": 64,
            "rgb8_sha256": "ab",
            "recipe": {"seed": 7},
        }
    ],
}
JOB = {
    "id": "job_1",
    "object": "job",
    "task": "generate",
    "status": "queued",
    "created_at": 1.0,
    "queue_position": 0,
    "progress": {"step": 0, "total_steps": 4, "images_done": 0, "n": 1},
    "request": {},
    "urls": {"self": "s", "cancel": "c", "ws": "w"},
}


def _error(status: int, error_type: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"type": error_type, "code": error_type, "message": "nope", "param": "width"}}
    return httpx.Response(status, json=body, headers=headers)


def _client(handler: Any, sleeps: list[float] | None = None, **kw: Any) -> DreamLite:
    transport = httpx.MockTransport(handler)
    return DreamLite(
        http_client=httpx.Client(transport=transport, base_url="http://test"),
        api_key="sk",
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        **kw,
    )


def test_generate_sends_fields_key_and_idempotency_and_parses_images() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=IMAGES)

    result = _client(handler).images.generate("a cat", size="64x64", seed=7)
    assert result.data[0].seed == 7
    assert result.data[0].bytes() == b"PNG"
    request = seen[0]
    assert request.url.path == "/v1/generate"
    assert request.headers["authorization"] == "Bearer sk"
    assert request.headers["idempotency-key"].startswith("client-")
    assert "prefer" not in request.headers
    assert json.loads(request.content) == {"prompt": "a cat", "n": 1, "size": "64x64", "seed": 7}


def test_async_mode_returns_the_job_object() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["prefer"] == "respond-async"
        return httpx.Response(202, json=JOB)

    job = _client(handler).images.generate("x", wait=False)
    assert job.object == "job"
    assert job.queue_position == 0


def test_edit_is_multipart_with_the_file() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"].startswith("multipart/form-data")
        assert b'name="image"' in request.content
        assert b"RAWPNG" in request.content
        assert b'name="working_size"' in request.content
        return httpx.Response(200, json=IMAGES)

    _client(handler).images.edit(b"RAWPNG", "make it blue", working_size="64x64")


@pytest.mark.parametrize(
    ("status", "error_type", "cls"),
    [
        (400, "invalid_request", InvalidRequestError),
        (401, "authentication_error", AuthenticationError),
        (404, "not_found", NotFoundError),
        (409, "idempotency_conflict", IdempotencyConflictError),
    ],
)
def test_errors_are_typed_and_not_retried(status: int, error_type: str, cls: type[Exception]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _error(status, error_type)

    with pytest.raises(cls) as info:
        _client(handler).jobs.get("job_x")
    assert len(calls) == 1
    assert getattr(info.value, "param", None) == "width"


def test_overloaded_is_retried_after_retry_after_with_the_same_idempotency_key() -> None:
    keys: list[str] = []
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        if len(keys) < 3:
            return _error(503, "overloaded", {"Retry-After": "3"})
        return httpx.Response(200, json=IMAGES)

    _client(handler, sleeps).images.generate("x")
    assert sleeps == [3.0, 3.0]
    assert len(set(keys)) == 1


def test_retries_give_up_after_max_retries() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _error(503, "overloaded", {"Retry-After": "1"})

    with pytest.raises(OverloadedError) as info:
        _client(handler, max_retries=1).images.generate("x")
    assert info.value.retry_after_s == 1.0
    assert info.value.status_code == 503

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(APIConnectionError):
        _client(broken, max_retries=1).jobs.cancel("job_1")


@pytest.mark.anyio
async def test_async_client() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            return httpx.Response(200, json={**JOB, "status": "canceled"})
        return httpx.Response(200, json=IMAGES)

    async def no_sleep(_: float) -> None:
        return None

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://test")
    async with AsyncDreamLite(http_client=http, sleep=no_sleep) as client:
        result = await client.images.generate("x", size="64x64")
        assert result.data[0].seed == 7  # type: ignore[union-attr]
        assert (await client.jobs.cancel("job_1")).status == "canceled"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
