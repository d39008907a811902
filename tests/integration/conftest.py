"""Fixtures for the in-process server tests: the real app on the real tiny pipeline (one loaded backend).

Every app built here shares the session's tiny torch backend (``tests/conftest.py``) through its own
``Pipeline`` (so each app has its own prompt-feature cache and runtime thread), warms up at 64², and is
driven through Starlette's ``TestClient`` (HTTP and WebSocket, lifespan included).
"""

from __future__ import annotations

import base64
import contextlib
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.engine.engine import Engine
from server.engine.runner import PipelineRuntime, RuntimeLoader
from server.settings import ServerSettings

READY_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def runtime_loader(tiny_pipeline: Any) -> RuntimeLoader:
    from model_runtime import Pipeline

    def loader(cache: Any) -> PipelineRuntime:
        return PipelineRuntime(Pipeline(tiny_pipeline.backend, feature_cache=cache))

    return loader


def make_settings(**groups: Any) -> ServerSettings:
    """Test settings: fast warm-up; anything given overrides (``batching={"max_wait_ms": 5}``)."""
    data: dict[str, Any] = {"model": {"warmup_size": "64x64"}, "batching": {"max_wait_ms": 20.0}}
    for key, value in groups.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ServerSettings.model_validate(data)


@contextlib.contextmanager
def running_app(
    loader: RuntimeLoader, settings: ServerSettings, *, wait_ready: bool = True
) -> Iterator[TestClient]:
    """A started app (lifespan run) whose model is loaded and warmed."""
    app = create_app(settings, runtime_loader=loader)
    with TestClient(app) as client:
        if wait_ready:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the app did not become ready"
                time.sleep(0.05)
        yield client


@pytest.fixture(scope="module")
def client(runtime_loader: RuntimeLoader) -> Iterator[TestClient]:
    """One ready app per test module with the default test settings."""
    with running_app(runtime_loader, make_settings()) as c:
        yield c


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def call_in_loop(client: TestClient, fn: Callable[[], Any]) -> Any:
    """Run a sync callable on the app's event loop (engine.pause/resume are not thread-safe)."""
    assert client.portal is not None

    async def run() -> Any:
        return fn()

    return client.portal.call(run)


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_b64_image(data: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def wait_status(
    client: TestClient,
    job_id: str,
    statuses: set[str],
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if body.get("status") in statuses:
            return body
        assert time.monotonic() < deadline, f"job {job_id} stuck in {body.get('status')}"
        time.sleep(0.02)
