"""Every 4xx case through the real app: the OpenAI envelope, a stable type, the field, never a 500."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.engine.runner import RuntimeLoader
from tests.integration.conftest import make_settings, png_bytes, running_app


def _assert_error(response: Any, status: int, error_type: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert error["type"] == error_type
    if param is not None:
        assert error["param"] == param, error
    return error


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height but that carries almost no data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    chunk = b"IDAT" + idat
    data += struct.pack(">I", len(idat)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


@pytest.fixture(scope="module")
def strict_client(runtime_loader: RuntimeLoader) -> Iterator[TestClient]:
    settings = make_settings(
        limits={
            "max_n": 4,
            "max_prompt_chars": 50,
            "max_upload_bytes": 64 * 1024,
            "max_image_pixels": 512 * 512,
        },
        auth={"api_keys": ["sk-test-1", "sk-test-2"]},
    )
    with running_app(runtime_loader, settings) as c:
        c.headers["Authorization"] = "Bearer sk-test-1"
        yield c


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"prompt": "x", "size": "1000x256"}, "size", "Given: 1000"),
        ({"prompt": "x", "size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"prompt": "x", "width": 64}, "height", "together"),
        ({"prompt": "x", "n": 5}, "n", "Given: 5"),
        ({"prompt": "x", "n": "many"}, "n", "integer"),
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": "x" * 51}, "prompt", "at most 50"),
        ({"prompt": "x", "seed": -1}, "seed", "Given: -1"),
        ({"prompt": "x", "seed": 2**64}, "seed", "range"),
        ({"prompt": "x", "steps": 0}, "steps", "Given: 0"),
        ({"prompt": "x", "output_format": "gif"}, "output_format", "gif"),
        ({"prompt": "x", "noise": "pcg64"}, "noise", "pcg64"),
        ({"prompt": "x", "model": "dall-e-3"}, "model", "dall-e-3"),
        ({"prompt": "x", "quality": "hd"}, "quality", "hd"),
        ({"prompt": "x", "background": "transparent"}, "background", "transparent"),
        ({"prompt": "x", "timeout_s": 100000}, "timeout_s", "Given: 100000"),
        ({"prompt": "x", "output_compression": 101}, "output_compression", "Given: 101"),
        ({"prompt": "x", "style": "vivid"}, "style", "not a known field"),
        ({}, "prompt", "required"),
    ],
)
def test_generate_validation_errors_are_400(
    strict_client: TestClient, body: dict[str, Any], param: str, needle: str
) -> None:
    error = _assert_error(strict_client.post("/v1/generate", json=body), 400, "invalid_request", param)
    assert needle in error["message"], error["message"]
    assert f"`{param}`" in error["message"]


def test_malformed_json_is_400(strict_client: TestClient) -> None:
    response = strict_client.post(
        "/v1/generate", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    error = _assert_error(response, 400, "invalid_request")
    assert error["code"] == "invalid_json"


def test_empty_body_is_400_naming_the_body(strict_client: TestClient) -> None:
    response = strict_client.post("/v1/generate", content=b"", headers={"Content-Type": "application/json"})
    error = _assert_error(response, 400, "invalid_request", "body")
    assert error["code"] == "missing_field"
    assert "None" not in error["message"]


def test_runtime_validation_is_400_with_its_field(strict_client: TestClient) -> None:
    # working_size is checked by the runtime's plan (multiple of 32): InvalidInputError → 400 + field
    body = {"prompt": "x", "working_size": "100x100", "image": base64.b64encode(png_bytes(32, 32)).decode()}
    _assert_error(strict_client.post("/v1/edit", json=body), 400, "invalid_request", "working_size")


def test_auth_missing_and_wrong_key_are_401(strict_client: TestClient) -> None:
    body = {"prompt": "x", "size": "64x64"}
    no_key = strict_client.post("/v1/generate", json=body, headers={"Authorization": ""})
    assert _assert_error(no_key, 401, "authentication_error")["code"] == "missing_api_key"
    wrong = strict_client.post("/v1/generate", json=body, headers={"Authorization": "Bearer nope"})
    assert _assert_error(wrong, 401, "authentication_error")["code"] == "invalid_api_key"
    _assert_error(strict_client.get("/v1/models", headers={"Authorization": ""}), 401, "authentication_error")
    # probes and metrics stay open (protect_metrics is off)
    assert strict_client.get("/healthz", headers={"Authorization": ""}).status_code == 200
    assert strict_client.get("/metrics", headers={"Authorization": ""}).status_code == 200


def test_jobs_are_private_to_their_key(strict_client: TestClient) -> None:
    created = strict_client.post(
        "/v1/generate", json={"prompt": "mine", "size": "64x64"}, headers={"Prefer": "respond-async"}
    )
    job_id = created.json()["id"]
    other = {"Authorization": "Bearer sk-test-2"}
    _assert_error(strict_client.get(f"/v1/jobs/{job_id}", headers=other), 404, "not_found")
    _assert_error(strict_client.post(f"/v1/jobs/{job_id}/cancel", headers=other), 404, "not_found")
    assert strict_client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"


def test_edit_errors(strict_client: TestClient) -> None:
    files = {"image": ("a.png", png_bytes(32, 32), "image/png")}
    _assert_error(
        strict_client.post("/v1/edit", content=b"prompt=x", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    _assert_error(strict_client.post("/v1/edit", data={"prompt": "x"}), 400, "invalid_request", "image")
    _assert_error(
        strict_client.post(
            "/v1/edit", data={"prompt": "x"}, files={"image": ("a.txt", b"not an image", "text/plain")}
        ),
        400,
        "invalid_request",
        "image",
    )
    _assert_error(
        strict_client.post(
            "/v1/edit",
            data={"prompt": "x"},
            files={**files, "mask": ("m.png", png_bytes(32, 32), "image/png")},
        ),
        400,
        "invalid_request",
        "mask",
    )
    _assert_error(
        strict_client.post("/v1/edit", json={"prompt": "x", "image": "%%%not-base64%%%"}),
        400,
        "invalid_request",
        "image",
    )
    _assert_error(
        strict_client.post("/v1/edit", data={"prompt": "x", "n": "9"}, files=files),
        400,
        "invalid_request",
        "n",
    )


def test_upload_limits_are_413(strict_client: TestClient) -> None:
    for side in (2_000, 100_000):  # above our limit; far above Pillow's own bomb limit
        bomb = _png_header_only(side, side)
        assert len(bomb) < 1024
        error = _assert_error(
            strict_client.post(
                "/v1/edit", data={"prompt": "x"}, files={"image": ("bomb.png", bomb, "image/png")}
            ),
            413,
            "payload_too_large",
            "image",
        )
        assert error["code"] == "image_too_many_pixels"
    big = b"\x89PNG" + b"\0" * (70 * 1024)
    error = _assert_error(
        strict_client.post("/v1/edit", data={"prompt": "x"}, files={"image": ("big.png", big, "image/png")}),
        413,
        "payload_too_large",
    )
    huge_body = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    _assert_error(
        strict_client.post("/v1/generate", content=huge_body, headers={"Content-Type": "application/json"}),
        413,
        "payload_too_large",
    )


def test_unknown_route_and_method_use_the_envelope(strict_client: TestClient) -> None:
    _assert_error(strict_client.get("/v1/nope"), 404, "not_found")
    _assert_error(strict_client.get("/v1/generate"), 405, "method_not_allowed")


def test_not_ready_is_503_with_retry_after(runtime_loader: RuntimeLoader) -> None:
    import threading

    gate = threading.Event()

    def slow_loader(cache: Any) -> Any:
        gate.wait(30)
        return runtime_loader(cache)

    with running_app(slow_loader, make_settings(), wait_ready=False) as client:
        try:
            ready = client.get("/readyz")
            _assert_error(ready, 503, "not_ready")
            assert ready.headers["retry-after"]
            _assert_error(client.post("/v1/generate", json={"prompt": "x"}), 503, "not_ready")
        finally:
            gate.set()


def test_guidance_is_refused_by_the_mobile_model(client: TestClient) -> None:
    """The distilled mobile model runs without guidance: asking for it is a 400 naming the field."""
    error = _assert_error(
        client.post("/v1/generate", json={"prompt": "x", "size": "64x64", "guidance_scale": 3.0}),
        400,
        "invalid_request",
        "guidance_scale",
    )
    assert "without guidance" in error["message"]
