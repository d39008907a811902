"""Parity endpoints on the real app: manifest, reference jobs, verification reports, errors, metrics."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model_runtime import load_pipeline
from model_runtime.parity.canonical import CanonicalRequest
from model_runtime.parity.runner import run_request
from model_runtime.parity.trace import record
from server.engine.runner import RuntimeLoader
from tests.integration.conftest import make_settings, running_app
from tests.unit.model_runtime.export.tiny_bundle import SIZE, STEPS

EXECUTOR = "onnx:w8a16"


@pytest.fixture(scope="module")
def parity_client(
    runtime_loader: RuntimeLoader, built_bundle: tuple[Path, dict[str, Any]]
) -> Iterator[TestClient]:
    bundle, _ = built_bundle
    settings = make_settings(parity={"bundle": str(bundle), "executors": [EXECUTOR, "onnx:fp32"]})
    with running_app(runtime_loader, settings) as client:
        yield client


@pytest.fixture(scope="module")
def device_run(
    built_bundle: tuple[Path, dict[str, Any]],
) -> tuple[CanonicalRequest, Any, dict[str, np.ndarray]]:
    """A 'device' trace: the bundle's w8a16 graphs on the CPU EP, run here by the same code as a phone app."""
    bundle, _ = built_bundle
    pipeline = load_pipeline(bundle, backend="onnx", precision="w8a16")
    request = CanonicalRequest.create(
        task="generate",
        prompt="a red apple",
        seed=9,
        width=SIZE[0],
        height=SIZE[1],
        steps=STEPS,
        bundle_id=pipeline.backend.info.details["bundle_id"],
    )
    trace, tensors = run_request(pipeline, request, executor="device")
    return request, trace, tensors


def wait_for_job(client: TestClient, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    """Poll a parity job until it succeeds or fails; returns its last state."""
    deadline = time.monotonic() + timeout_s
    while (state := client.get(f"/v1/parity/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return dict(state)


def npz_b64(tensors: dict[str, np.ndarray]) -> str:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **tensors)
    return base64.b64encode(buffer.getvalue()).decode()


def test_manifest(parity_client: TestClient, built_bundle: tuple[Path, dict[str, Any]]) -> None:
    body = parity_client.get("/v1/parity/manifest").json()
    assert len(body["bundle_id"]) == 64
    assert body["executors"] == [EXECUTOR, "onnx:fp32"]
    assert body["noise"]["spec"] == "DLN-1"
    assert body["noise"]["golden_vectors"]["spec_version"] == "DLN-1"
    assert "files" in body["manifest"]


def test_verify_bit_exact_and_metrics(parity_client: TestClient, device_run: Any) -> None:
    request, trace, tensors = device_run
    body = {
        "request": request.model_dump(mode="json"),
        "device_trace": trace.model_dump(mode="json"),
        "device_tensors_npz_b64": npz_b64(tensors),
        "executor": EXECUTOR,
    }
    response = parity_client.post("/v1/parity/verify", json=body)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["verdict"] == "bit_exact"
    assert report["first_divergent_stage"] is None
    assert all(s["verdict"] == "bit_exact" for s in report["stages"])
    assert [d["field"] for d in report["environment_diff"]] == ["executor.name"]
    metrics = parity_client.get("/metrics").text
    assert 'dreamlite_parity_checks_total{verdict="bit_exact"} 1.0' in metrics
    assert 'dreamlite_parity_max_abs_error_count{stage="unet_out"}' in metrics


def test_verify_names_the_first_divergent_stage_and_replays(
    parity_client: TestClient, device_run: Any
) -> None:
    request, trace, tensors = device_run
    bad = dict(tensors)
    bad["step1.latents"] = tensors["step1.latents"].copy()
    bad["step1.latents"][0, 0, 0, 0] += 5.0  # far outside the declared tolerance
    data = trace.model_dump(mode="json")
    stages = [record(s["name"], bad[s["name"]]).model_dump(mode="json") for s in data["stages"]]
    data["stages"] = stages
    body = {
        "request": request.model_dump(mode="json"),
        "device_trace": data,
        "device_tensors_npz_b64": npz_b64(bad),
        "executor": EXECUTOR,
        "replay": True,
    }
    job = parity_client.post("/v1/parity/verify", json=body, headers={"Prefer": "respond-async"})
    assert job.status_code == 202
    job_id = job.json()["id"]
    state = wait_for_job(parity_client, job_id)
    report = state["result"]["report"]
    assert report["first_divergent_stage"] == "step1.latents"
    assert report["verdict"] in ("within_tolerance", "mismatch")
    assert report["replay"]["stage"] == "step1.latents"
    assert report["replay"]["outcome"] == "stage_diverges"
    page = parity_client.get(f"/v1/parity/jobs/{job_id}/report.html")
    assert page.status_code == 200
    assert 'id="first-divergent">step1.latents<' in page.text


def test_reference_job_and_tensors(parity_client: TestClient, device_run: Any) -> None:
    request, trace, _ = device_run
    job = parity_client.post(
        "/v1/parity/reference", json={"request": request.model_dump(mode="json"), "executor": EXECUTOR}
    )
    assert job.status_code == 202
    job_id = job.json()["id"]
    state = wait_for_job(parity_client, job_id)
    assert state["status"] == "succeeded", state
    ref = state["result"]["trace"]
    assert [s["sha256"] for s in ref["stages"]] == [s.sha256 for s in trace.stages]
    npz = parity_client.get(f"/v1/parity/jobs/{job_id}/tensors")
    assert npz.status_code == 200
    with np.load(io.BytesIO(npz.content)) as data:
        assert "step0.unet_out" in data.files


@pytest.mark.parametrize(
    ("mutate", "param"),
    [
        (lambda b: b.update(executor="qnn:sm9999"), "executor"),
        (lambda b: b["device_trace"].update(request_id="0" * 64), "device_trace.request_id"),
        (lambda b: b.update(device_tensors_npz_b64="%%%"), "device_tensors_npz_b64"),
        (lambda b: b.update(edit_image_b64="aGVsbG8="), "edit_image_b64"),
    ],
)
def test_verify_client_errors_are_400(
    parity_client: TestClient, device_run: Any, mutate: Any, param: str
) -> None:
    request, trace, _ = device_run
    body = {
        "request": request.model_dump(mode="json"),
        "device_trace": trace.model_dump(mode="json"),
        "executor": EXECUTOR,
    }
    mutate(body)
    response = parity_client.post("/v1/parity/verify", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_parity_off_without_a_bundle(client: TestClient) -> None:
    response = client.get("/v1/parity/manifest")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "parity_not_configured"
