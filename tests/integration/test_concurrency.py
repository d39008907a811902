"""Overlapping generate / edit / cancel / status calls from several threads: every job ends exactly once,
every response is a success or a typed client error, never a 500 (peers.md §3 complaint 4)."""

from __future__ import annotations

import base64
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from server.engine.runner import RuntimeLoader
from tests.integration.conftest import make_settings, png_bytes, running_app, wait_status

ASYNC = {"Prefer": "respond-async"}


def test_overlapping_calls_never_break_the_server(runtime_loader: RuntimeLoader) -> None:
    image = base64.b64encode(png_bytes(64, 64)).decode()
    settings = make_settings(
        batching={"max_batch_size": 4, "max_wait_ms": 30.0}, queue={"max_queued_jobs": 64}
    )
    with running_app(runtime_loader, settings) as client:

        def worker(seed: int) -> list[tuple[str, int, Any]]:
            rng = random.Random(seed)
            seen: list[tuple[str, int, Any]] = []
            for i in range(4):
                if rng.random() < 0.5:
                    r = client.post(
                        "/v1/generate", json={"prompt": f"g{seed}-{i}", "size": "64x64"}, headers=ASYNC
                    )
                else:
                    r = client.post(
                        "/v1/edit",
                        headers=ASYNC,
                        json={"prompt": f"e{seed}-{i}", "image": image, "working_size": "64x64"},
                    )
                seen.append(("create", r.status_code, r.json().get("id")))
                job_id = r.json().get("id")
                if job_id and rng.random() < 0.3:
                    c = client.post(f"/v1/jobs/{job_id}/cancel")
                    seen.append(("cancel", c.status_code, c.json().get("status")))
                s = client.get(f"/v1/jobs/{job_id}")
                seen.append(("status", s.status_code, s.json().get("status")))
            sync = client.post("/v1/generate", json={"prompt": f"s{seed}", "size": "64x64"})
            seen.append(("sync", sync.status_code, None))
            return seen

        with ThreadPoolExecutor(4) as pool:
            results = [call for calls in pool.map(worker, range(4)) for call in calls]
        assert all(code < 500 for _, code, _ in results), results
        assert all(code == 200 for kind, code, _ in results if kind in ("status", "cancel", "sync"))
        job_ids = [value for kind, code, value in results if kind == "create"]
        assert len(job_ids) == 16
        finals = [wait_status(client, j, {"succeeded", "canceled", "failed"}) for j in job_ids]
        assert {f["status"] for f in finals} <= {"succeeded", "canceled"}
        for job_id in job_ids:
            with client.websocket_connect("/v1/ws") as ws:
                ws.send_json({"type": "subscribe", "job_ids": [job_id]})
                types = []
                while not types or types[-1] not in ("job.succeeded", "job.failed", "job.canceled"):
                    types.append(ws.receive_json()["type"])
            assert types[0] == "job.queued"
            assert sum(t in ("job.succeeded", "job.failed", "job.canceled") for t in types) == 1
        assert client.get("/readyz").status_code == 200
