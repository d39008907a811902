"""Async jobs, polling, cancel by id (queued and running), idempotency and start deadlines."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.engine.runner import RuntimeLoader
from tests.integration.conftest import call_in_loop, engine_of, make_settings, running_app, wait_status

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture(scope="module")
def jobs_client(runtime_loader: RuntimeLoader) -> Iterator[TestClient]:
    settings = make_settings(queue={"max_queued_jobs": 3, "retry_after_s": 3})
    with running_app(runtime_loader, settings) as c:
        yield c


@pytest.fixture
def paused(jobs_client: TestClient) -> Iterator[TestClient]:
    engine = engine_of(jobs_client)
    call_in_loop(jobs_client, engine.pause)
    try:
        yield jobs_client
    finally:
        call_in_loop(jobs_client, engine.resume)


def test_async_then_poll_until_succeeded(jobs_client: TestClient) -> None:
    response = jobs_client.post(
        "/v1/generate", json={"prompt": "p", "size": "64x64", "seed": 1}, headers=ASYNC
    )
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["object"] == "job"
    assert job["status"] in ("queued", "running")
    assert job["urls"]["cancel"].endswith(f"/v1/jobs/{job['id']}/cancel")
    done = jobs_client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    assert done["status"] == "succeeded"
    assert done["result"]["data"][0]["seed"] == 1
    assert done["progress"] == {"step": 4, "total_steps": 4, "images_done": 1, "n": 1}
    assert done["started_at"] >= done["created_at"]
    assert done["completed_at"] >= done["started_at"]


def test_queue_position_and_cancel_of_a_queued_job(paused: TestClient) -> None:
    ids = [
        paused.post("/v1/generate", json={"prompt": f"p{i}", "size": "64x64"}, headers=ASYNC).json()["id"]
        for i in range(2)
    ]
    assert [paused.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids] == [0, 1]
    canceled = paused.post(f"/v1/jobs/{ids[0]}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert paused.get(f"/v1/jobs/{ids[1]}").json()["queue_position"] == 0
    # idempotent
    again = paused.post(f"/v1/jobs/{ids[0]}/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "canceled"
    paused.post(f"/v1/jobs/{ids[1]}/cancel")


def test_full_queue_is_503_with_retry_after(paused: TestClient) -> None:
    ids = []
    for i in range(3):
        r = paused.post("/v1/generate", json={"prompt": f"q{i}", "size": "64x64"}, headers=ASYNC)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    full = paused.post("/v1/generate", json={"prompt": "one too many", "size": "64x64"}, headers=ASYNC)
    assert full.status_code == 503
    assert int(full.headers["retry-after"]) >= 3
    assert full.json()["error"]["type"] == "overloaded"
    assert full.json()["error"]["code"] == "server_overloaded"
    for job_id in ids:
        paused.post(f"/v1/jobs/{job_id}/cancel")


def test_running_job_cancels_between_steps(jobs_client: TestClient) -> None:
    response = jobs_client.post(
        "/v1/generate", json={"prompt": "long", "size": "128x128", "steps": 40, "seed": 4}, headers=ASYNC
    )
    job_id = response.json()["id"]
    body = wait_status(jobs_client, job_id, {"running", "succeeded"})
    deadline = time.monotonic() + 30
    while body["progress"]["step"] < 1 and time.monotonic() < deadline:
        body = jobs_client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "running"
    canceled = jobs_client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert canceled["status"] == "canceled"
    assert canceled["progress"]["step"] < 40


def test_idempotency_key_returns_the_same_job_and_409_on_a_different_body(jobs_client: TestClient) -> None:
    headers = {**ASYNC, "Idempotency-Key": "retry-me-123"}
    body = {"prompt": "same", "size": "64x64"}
    first = jobs_client.post("/v1/generate", json=body, headers=headers)
    second = jobs_client.post("/v1/generate", json=body, headers=headers)
    assert first.status_code == 202
    assert second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    # a sync retry with the same key gets the same job's images (and its drawn seed)
    sync = jobs_client.post("/v1/generate", json=body, headers={"Idempotency-Key": "retry-me-123"})
    assert sync.status_code == 200
    assert sync.json()["id"] == first.json()["id"]
    assert sync.json()["data"][0]["seed"] == first.json()["request"]["seed"]
    conflict = jobs_client.post("/v1/generate", json={**body, "prompt": "different"}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["type"] == "idempotency_conflict"


def test_start_deadline_passed_is_504(paused: TestClient) -> None:
    queued = paused.post(
        "/v1/generate", json={"prompt": "late", "size": "64x64", "timeout_s": 0.2}, headers=ASYNC
    ).json()
    failed = wait_status(paused, queued["id"], {"failed"}, timeout_s=10)
    assert failed["error"]["type"] == "deadline_exceeded"
    sync = paused.post("/v1/generate", json={"prompt": "late sync", "size": "64x64", "timeout_s": 0.2})
    assert sync.status_code == 504
    assert sync.json()["error"]["type"] == "deadline_exceeded"
    assert sync.json()["error"]["param"] == "timeout_s"


def test_unknown_job_is_404_and_images_of_unfinished_jobs_are_404(jobs_client: TestClient) -> None:
    missing = jobs_client.get("/v1/jobs/job_doesnotexist")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    assert jobs_client.post("/v1/jobs/job_doesnotexist/cancel").status_code == 404
    assert jobs_client.get("/v1/jobs/job_doesnotexist/images/0").status_code == 404
