"""Unified batching: a generate and an edit in ONE UNet batch, each equal to its solo run; the
deterministic path's bits never depend on what else was queued; batching off gives batch size 1."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model_runtime import SampleSpec
from model_runtime.preprocess import decode_image
from model_runtime.recipe import rgb8_sha256
from server.engine.runner import RuntimeLoader
from tests.integration.conftest import decode_b64_image, make_settings, png_bytes, running_app, wait_status

ASYNC = {"Prefer": "respond-async"}
UINT8_TOLERANCE = 1  # levels; the runtime promises 1e-4 on float intermediates (measured: see docs)


@pytest.fixture(scope="module")
def batching_client(runtime_loader: RuntimeLoader) -> Iterator[TestClient]:
    # A long max_wait and max_batch_size 2: a batch leaves exactly when the second job arrives.
    settings = make_settings(batching={"max_batch_size": 2, "max_wait_ms": 5000.0})
    with running_app(runtime_loader, settings) as c:
        yield c


def _submit_pair(client: TestClient, gen: dict[str, Any], edit: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    a = client.post("/v1/generate", json=gen, headers=ASYNC)
    b = client.post("/v1/edit", json=edit, headers=ASYNC)
    assert a.status_code == 202, a.text
    assert b.status_code == 202, b.text
    return (
        wait_status(client, a.json()["id"], {"succeeded", "failed"}),
        wait_status(client, b.json()["id"], {"succeeded", "failed"}),
    )


def test_generate_and_edit_share_one_batch_and_match_their_solo_runs(
    batching_client: TestClient, tiny_pipeline: Any
) -> None:
    source = png_bytes(128, 128, seed=4)
    gen = {"prompt": "a mountain lake", "size": "128x128", "seed": 21}
    edit = {
        "prompt": "make it night",
        "seed": 22,
        "working_size": "128x128",
        "image": base64.b64encode(source).decode(),
    }
    job_gen, job_edit = _submit_pair(batching_client, gen, edit)
    assert job_gen["status"] == job_edit["status"] == "succeeded", (job_gen, job_edit)
    item_gen = job_gen["result"]["data"][0]
    item_edit = job_edit["result"]["data"][0]
    # one UNet batch of two, different tasks
    assert item_gen["recipe"]["batch_size"] == 2
    assert item_edit["recipe"]["batch_size"] == 2
    assert item_gen["recipe"]["task"] == "generate"
    assert item_edit["recipe"]["task"] == "edit"
    assert job_gen["batch_size"] == job_edit["batch_size"] == 2

    solo_gen = tiny_pipeline.run(
        [SampleSpec(task="generate", prompt="a mountain lake", seed=21, width=128, height=128)]
    )[0].image
    solo_edit = tiny_pipeline.run(
        [
            SampleSpec(
                task="edit",
                prompt="make it night",
                seed=22,
                image=decode_image(source),
                working_size=(128, 128),
            )
        ]
    )[0].image
    diff_gen = np.abs(decode_b64_image(item_gen["b64_json"]).astype(np.int16) - solo_gen.astype(np.int16))
    diff_edit = np.abs(decode_b64_image(item_edit["b64_json"]).astype(np.int16) - solo_edit.astype(np.int16))
    assert int(diff_gen.max()) <= UINT8_TOLERANCE, int(diff_gen.max())
    assert int(diff_edit.max()) <= UINT8_TOLERANCE, int(diff_edit.max())


def test_deterministic_request_bits_do_not_depend_on_queued_work(
    batching_client: TestClient, tiny_pipeline: Any
) -> None:
    spec = SampleSpec(task="generate", prompt="a quiet street", seed=77, width=128, height=128)
    expected = rgb8_sha256(tiny_pipeline.run([spec])[0].image)
    body = {"prompt": "a quiet street", "size": "128x128", "seed": 77, "deterministic": True}
    # queued next to two batchable jobs of the same working size
    other = {"prompt": "noise", "size": "128x128", "seed": 1}
    ids = [
        batching_client.post("/v1/generate", json=other, headers=ASYNC).json()["id"],
        batching_client.post("/v1/generate", json=body, headers=ASYNC).json()["id"],
        batching_client.post("/v1/generate", json={**other, "seed": 2}, headers=ASYNC).json()["id"],
    ]
    jobs = [wait_status(batching_client, i, {"succeeded", "failed"}) for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    det = jobs[1]["result"]["data"][0]
    assert det["recipe"]["batch_size"] == 1
    assert det["rgb8_sha256"] == expected
    # the other two were batched together around it
    assert jobs[0]["result"]["data"][0]["recipe"]["batch_size"] == 2
    # and alone, sync, it is the same bits again
    again = batching_client.post("/v1/generate", json=body).json()["data"][0]
    assert again["rgb8_sha256"] == expected


def test_n_images_of_one_job_ride_in_one_batch(runtime_loader: RuntimeLoader) -> None:
    with running_app(runtime_loader, make_settings(batching={"max_batch_size": 4})) as client:
        response = client.post("/v1/generate", json={"prompt": "p", "size": "64x64", "seed": 3, "n": 3})
        data = response.json()["data"]
        assert [d["recipe"]["batch_size"] for d in data] == [3, 3, 3]


def test_batching_off_runs_every_image_alone(runtime_loader: RuntimeLoader) -> None:
    with running_app(runtime_loader, make_settings(batching={"enabled": False})) as client:
        response = client.post("/v1/generate", json={"prompt": "p", "size": "64x64", "seed": 3, "n": 2})
        assert [d["recipe"]["batch_size"] for d in response.json()["data"]] == [1, 1]


def test_canceling_one_job_does_not_disturb_its_batch_mate(
    batching_client: TestClient, tiny_pipeline: Any
) -> None:
    body = {"size": "128x128", "steps": 12}
    victim = batching_client.post("/v1/generate", json={**body, "prompt": "victim", "seed": 1}, headers=ASYNC)
    mate = batching_client.post("/v1/generate", json={**body, "prompt": "mate", "seed": 2}, headers=ASYNC)
    victim_id, mate_id = victim.json()["id"], mate.json()["id"]
    running = wait_status(batching_client, victim_id, {"running"})
    while running["progress"]["step"] < 2:
        running = batching_client.get(f"/v1/jobs/{victim_id}").json()
    assert batching_client.post(f"/v1/jobs/{victim_id}/cancel").json()["status"] == "canceled"
    done = wait_status(batching_client, mate_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    item = done["result"]["data"][0]
    assert item["recipe"]["batch_size"] == 2
    solo = tiny_pipeline.run(
        [SampleSpec(task="generate", prompt="mate", seed=2, width=128, height=128, steps=12)]
    )
    diff = np.abs(decode_b64_image(item["b64_json"]).astype(np.int16) - solo[0].image.astype(np.int16))
    assert int(diff.max()) <= UINT8_TOLERANCE
