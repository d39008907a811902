"""End to end: a real ``dreamlite serve`` (uvicorn) process on 127.0.0.1, real httpx and WebSocket clients.

Run with ``pytest -m e2e tests/e2e``. The server serves the tiny conformance model with a 64² warm-up.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "conformance" / "tiny-dreamlite-mobile"
KEY = "sk-e2e"
AUTH = {"Authorization": f"Bearer {KEY}"}
TERMINAL = {"job.succeeded", "job.failed", "job.canceled"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _png(width: int, height: int, seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "DREAMLITE_MODEL__WARMUP_SIZE": "64x64",
        "DREAMLITE_AUTH__API_KEYS": json.dumps([KEY]),
        "DREAMLITE_BATCHING__MAX_BATCH_SIZE": "2",
        "DREAMLITE_BATCHING__MAX_WAIT_MS": "400",
        "DREAMLITE_QUEUE__MAX_QUEUED_JOBS": "4",
        "DREAMLITE_LIMITS__MAX_UPLOAD_BYTES": str(256 * 1024),
        "DREAMLITE_LIMITS__MAX_IMAGE_PIXELS": str(1024 * 1024),
        "DREAMLITE_LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "server", "--model", str(TINY), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=120) as client:
        yield client


def _ws_url(server: str) -> str:
    return server.replace("http://", "ws://") + "/v1/ws"


def _wait(http: httpx.Client, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()
    return body


def test_generate_and_server_timing(http: httpx.Client) -> None:
    response = http.post("/v1/generate", json={"prompt": "a harbor", "size": "128x128", "seed": 3})
    assert response.status_code == 200, response.text
    assert "denoise;dur=" in response.headers["server-timing"]
    assert response.headers["x-request-id"]
    item = response.json()["data"][0]
    assert item["seed"] == 3
    assert item["recipe"]["rgb8_sha256"] == item["rgb8_sha256"]


def test_server_bits_equal_dreamlite_generate(http: httpx.Client, tmp_path: Path) -> None:
    body = {"prompt": "a red door", "size": "128x128", "seed": 42, "deterministic": True}
    served = http.post("/v1/generate", json=body).json()["data"][0]
    out = tmp_path / "cli.png"
    # `python -m model_runtime.cli generate` is the handler `dreamlite generate` dispatches to
    # (model_runtime.cli.run_sample), without the other areas' sub-commands.
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_runtime.cli",
            "generate",
            "--model",
            str(TINY),
            "--prompt",
            "a red door",
            "--seed",
            "42",
            "--size",
            "128x128",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    summary = json.loads(cli.stdout.strip().splitlines()[-1])
    assert summary["rgb8_sha256"] == served["rgb8_sha256"]


def test_edit_multipart_and_json(http: httpx.Client) -> None:
    source = _png(80, 48)
    fields = {"prompt": "make it warmer", "seed": "5", "working_size": "64x64"}
    multipart = http.post("/v1/edit", data=fields, files={"image": ("s.png", source, "image/png")})
    as_json = http.post(
        "/v1/images/edits",
        json={
            "prompt": "make it warmer",
            "seed": 5,
            "working_size": "64x64",
            "image": base64.b64encode(source).decode(),
        },
    )
    assert multipart.status_code == 200, multipart.text
    assert as_json.status_code == 200, as_json.text
    a, b = multipart.json()["data"][0], as_json.json()["data"][0]
    assert (a["width"], a["height"]) == (80, 48)
    assert a["rgb8_sha256"] == b["rgb8_sha256"]


def test_unified_batch_of_generate_and_edit(http: httpx.Client) -> None:
    async_headers = {"Prefer": "respond-async"}
    gen = http.post(
        "/v1/generate", json={"prompt": "dunes", "size": "64x64", "seed": 1}, headers=async_headers
    )
    edit = http.post(
        "/v1/edit",
        headers=async_headers,
        json={
            "prompt": "snow",
            "seed": 2,
            "working_size": "64x64",
            "image": base64.b64encode(_png(64, 64)).decode(),
        },
    )
    assert gen.status_code == edit.status_code == 202
    done = [_wait(http, r.json()["id"]) for r in (gen, edit)]
    assert [d["status"] for d in done] == ["succeeded", "succeeded"]
    assert [d["result"]["data"][0]["recipe"]["batch_size"] for d in done] == [2, 2]
    assert {d["task"] for d in done} == {"generate", "edit"}


def test_async_poll_cancel_and_ws_order_and_replay(http: httpx.Client, server: str) -> None:
    job = http.post(
        "/v1/generate", json={"prompt": "p", "size": "64x64", "n": 2}, headers={"Prefer": "respond-async"}
    ).json()
    with connect(_ws_url(server), additional_headers=AUTH) as ws:
        ws.send(json.dumps({"type": "subscribe", "job_ids": [job["id"]]}))
        events = []
        while not events or events[-1]["type"] not in TERMINAL:
            events.append(json.loads(ws.recv(timeout=60)))
    types = [e["type"] for e in events]
    assert types[:2] == ["job.queued", "job.started"]
    assert [e["step"] for e in events if e["type"] == "job.progress"] == [1, 2, 3, 4]
    assert types.count("job.image") == 2
    assert types[-1] == "job.succeeded"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    with connect(_ws_url(server) + f"?api_key={KEY}") as ws:
        ws.send(json.dumps({"type": "subscribe", "job_ids": [job["id"]], "since_seq": 4}))
        replay = []
        while not replay or replay[-1]["type"] not in TERMINAL:
            replay.append(json.loads(ws.recv(timeout=60)))
    assert replay == events[4:]
    assert _wait(http, job["id"])["status"] == "succeeded"

    slow = http.post(
        "/v1/generate",
        json={"prompt": "slow", "size": "128x128", "steps": 40},
        headers={"Prefer": "respond-async"},
    ).json()
    with connect(_ws_url(server), additional_headers=AUTH) as ws:
        ws.send(json.dumps({"type": "subscribe", "job_ids": [slow["id"]]}))
        while json.loads(ws.recv(timeout=60))["type"] != "job.progress":
            pass
    canceled = http.post(f"/v1/jobs/{slow['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    assert http.post(f"/v1/jobs/{slow['id']}/cancel").json()["status"] == "canceled"


def test_idempotency_and_client_disconnect_cancels_a_sync_job(http: httpx.Client, server: str) -> None:
    body = {"prompt": "idempotent", "size": "64x64"}
    first = http.post(
        "/v1/generate", json=body, headers={"Idempotency-Key": "e2e-1", "Prefer": "respond-async"}
    )
    again = http.post(
        "/v1/generate", json=body, headers={"Idempotency-Key": "e2e-1", "Prefer": "respond-async"}
    )
    assert first.json()["id"] == again.json()["id"]
    clash = http.post("/v1/generate", json={**body, "n": 2}, headers={"Idempotency-Key": "e2e-1"})
    assert clash.status_code == 409

    slow = {"prompt": "abandoned", "size": "128x128", "steps": 40}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server, headers=AUTH) as impatient:
        impatient.post("/v1/generate", json=slow, headers={"Idempotency-Key": "gone-1"}, timeout=1.5)
    job = http.post(
        "/v1/generate", json=slow, headers={"Idempotency-Key": "gone-1", "Prefer": "respond-async"}
    )
    assert job.status_code == 200  # the existing job
    assert _wait(http, job.json()["id"])["status"] == "canceled"


def test_client_errors(http: httpx.Client, server: str) -> None:
    cases = [
        (http.post("/v1/generate", json={"prompt": "x", "size": "1000x64"}), 400, "invalid_request"),
        (
            http.post("/v1/generate", content=b"{", headers={"Content-Type": "application/json"}),
            400,
            "invalid_request",
        ),
        (httpx.post(f"{server}/v1/generate", json={"prompt": "x"}), 401, "authentication_error"),
        (http.get("/v1/jobs/job_nope"), 404, "not_found"),
        (
            http.post("/v1/edit", content=b"x", headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        (
            http.post(
                "/v1/edit", data={"prompt": "x"}, files={"image": ("a.png", b"\0" * 300_000, "image/png")}
            ),
            413,
            "payload_too_large",
        ),
        (
            http.post(
                "/v1/edit", data={"prompt": "x"}, files={"image": ("a.png", _png(1100, 1000), "image/png")}
            ),
            413,
            "payload_too_large",
        ),
    ]
    for response, status, error_type in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["type"] == error_type


def test_full_queue_is_503_with_retry_after(http: httpx.Client) -> None:
    accepted, refused = [], None
    for i in range(12):
        r = http.post(
            "/v1/generate",
            json={"prompt": f"load {i}", "size": "128x128", "steps": 30},
            headers={"Prefer": "respond-async"},
        )
        if r.status_code == 503:
            refused = r
            break
        assert r.status_code == 202, r.text
        accepted.append(r.json()["id"])
    assert refused is not None, "the queue never filled"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "overloaded"
    for job_id in accepted:
        http.post(f"/v1/jobs/{job_id}/cancel")


def test_metrics_and_probes(http: httpx.Client, server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").status_code == 200
    text = httpx.get(f"{server}/metrics").text
    for name in (
        "dreamlite_http_requests_total",
        "dreamlite_queue_depth",
        "dreamlite_batch_size_bucket",
        "dreamlite_stage_duration_seconds_bucket",
        "dreamlite_prompt_cache_lookups_total",
        "dreamlite_request_failures_total",
        "dreamlite_queue_wait_seconds_bucket",
    ):
        assert name in text, name
    assert re.search(r'dreamlite_batches_total\{backend="torch",task="mixed"\} [1-9]', text)
    assert re.search(r'dreamlite_jobs_rejected_total\{reason="queue_full"\} [1-9]', text)


def test_python_client_against_the_real_server(server: str) -> None:
    import asyncio

    from clients import AsyncDreamLite, DreamLite, InvalidRequestError

    with DreamLite(server, api_key=KEY) as client:
        result = client.images.generate("client prompt", size="64x64", seed=9)
        assert result.data[0].seed == 9  # type: ignore[union-attr]
        edited = client.images.edit(
            _png(64, 64), "client edit", working_size="64x64", seed=1, multipart=False
        )
        assert edited.data[0].width == 64  # type: ignore[union-attr]
        with pytest.raises(InvalidRequestError) as info:
            client.images.generate("x", size="63x64")
        assert info.value.param == "width"
        job = client.images.generate("client async", size="64x64", wait=False)
        assert client.jobs.wait(job.id).status == "succeeded"

    async def follow() -> list[str]:
        async with AsyncDreamLite(server, api_key=KEY) as client:
            job = await client.images.generate("client events", size="64x64", wait=False)
            return [event.type async for event in client.events([job.id])]

    types = asyncio.run(follow())
    assert types[0] == "job.queued"
    assert types[-1] == "job.succeeded"
