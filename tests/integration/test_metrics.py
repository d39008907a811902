"""/metrics after real traffic: every declared family is exposed with the dreamlite_ prefix and moves."""

from __future__ import annotations

import re

from server.engine.runner import RuntimeLoader
from tests.integration.conftest import make_settings, running_app

FAMILIES = [
    "dreamlite_http_requests_total",
    "dreamlite_http_request_duration_seconds",
    "dreamlite_request_failures_total",
    "dreamlite_jobs_submitted_total",
    "dreamlite_jobs_completed_total",
    "dreamlite_jobs_rejected_total",
    "dreamlite_images_generated_total",
    "dreamlite_batches_total",
    "dreamlite_request_duration_seconds",
    "dreamlite_queue_wait_seconds",
    "dreamlite_time_to_first_image_seconds",
    "dreamlite_stage_duration_seconds",
    "dreamlite_denoise_step_duration_seconds",
    "dreamlite_batch_size",
    "dreamlite_response_size_bytes",
    "dreamlite_prompt_cache_lookups_total",
    "dreamlite_queue_depth",
    "dreamlite_queue_estimated_wait_seconds",
    "dreamlite_jobs_running",
    "dreamlite_ws_connections",
    "dreamlite_ws_events_sent_total",
    "dreamlite_worker_ready",
    "dreamlite_model_loaded",
    "dreamlite_build_info",
]


def _value(text: str, series: str) -> float:
    match = re.search(r"^" + re.escape(series) + r" ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{series} not found"
    return float(match.group(1))


def test_metrics_cover_requests_stages_batches_cache_and_failures(runtime_loader: RuntimeLoader) -> None:
    with running_app(runtime_loader, make_settings()) as client:
        body = {"prompt": "metrics please", "size": "64x64", "seed": 1}
        assert client.post("/v1/generate", json=body).status_code == 200
        assert (
            client.post("/v1/generate", json={**body, "seed": 2}).status_code == 200
        )  # same prompt: cache hit
        assert client.post("/v1/generate", json={"prompt": "x", "size": "1x1"}).status_code == 400
        with client.websocket_connect("/v1/ws") as ws:
            ws.send_json({"type": "ping"})
            ws.receive_json()
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for family in FAMILIES:
        assert f"# TYPE {family} " in text or f"# TYPE {family.removesuffix('_total')} counter" in text, (
            family
        )
    assert _value(text, 'dreamlite_jobs_submitted_total{mode="sync",task="generate"}') == 2
    assert (
        _value(text, 'dreamlite_jobs_completed_total{backend="torch",outcome="succeeded",task="generate"}')
        == 2
    )
    assert _value(text, 'dreamlite_images_generated_total{backend="torch",task="generate"}') == 2
    assert _value(text, 'dreamlite_request_failures_total{error_type="invalid_request"}') == 1
    assert _value(text, 'dreamlite_prompt_cache_lookups_total{result="hit"}') >= 1
    assert _value(text, 'dreamlite_prompt_cache_lookups_total{result="miss"}') >= 1
    for stage in ("text_encode", "vae_encode", "denoise", "decode", "image_encode"):
        assert _value(text, f'dreamlite_stage_duration_seconds_count{{backend="torch",stage="{stage}"}}') >= 2
    assert _value(text, 'dreamlite_batch_size_count{backend="torch",task="generate"}') == 2
    assert _value(text, 'dreamlite_http_requests_total{code="200",method="POST",route="/v1/generate"}') == 2
    assert _value(text, 'dreamlite_http_requests_total{code="400",method="POST",route="/v1/generate"}') == 1
    assert _value(text, "dreamlite_worker_ready") == 1
    assert _value(text, 'dreamlite_ws_events_sent_total{type="pong"}') == 1
    assert "job_" not in text  # no unbounded labels
