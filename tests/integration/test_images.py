"""Generate and edit through the real app on the tiny pipeline: shapes, seeds, recipes, formats."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from model_runtime import SampleSpec
from model_runtime.recipe import read_recipe, rgb8_sha256
from tests.integration.conftest import decode_b64_image, png_bytes


def test_generate_returns_image_seed_recipe_and_server_timing(client: TestClient) -> None:
    response = client.post("/v1/generate", json={"prompt": "a red fox", "size": "128x128", "seed": 11})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "images.response"
    assert body["size"] == "128x128"
    assert body["model"] == "tiny-dreamlite-mobile"
    (item,) = body["data"]
    assert item["seed"] == 11
    assert item["finish_reason"] == "success"
    pixels = decode_b64_image(item["b64_json"])
    assert pixels.shape == (128, 128, 3)
    assert rgb8_sha256(pixels) == item["rgb8_sha256"]
    recipe = item["recipe"]
    for field in (
        "seed",
        "noise",
        "steps",
        "sigmas",
        "size",
        "backend",
        "dtype",
        "model_id",
        "weights_sha256",
        "batch_size",
        "rgb8_sha256",
    ):
        assert field in recipe, field
    assert recipe["seed"] == 11
    assert recipe["noise"] == "torch-cpu"
    assert recipe["size"] == "128x128"
    embedded = read_recipe(base64.b64decode(item["b64_json"]))
    assert embedded == recipe
    timing = response.headers["server-timing"]
    assert "denoise;dur=" in timing
    assert "total;dur=" in timing
    assert response.headers["x-job-id"] == body["id"]


def test_server_image_is_bit_identical_to_solo_pipeline_run(client: TestClient, tiny_pipeline: Any) -> None:
    # A solo pipeline run is bit-identical to `dreamlite generate` (runtime issue); the e2e test also
    # runs the real CLI. Here: the server's bits equal the solo run's bits.
    response = client.post(
        "/v1/generate", json={"prompt": "a lighthouse", "size": "128x128", "seed": 5, "deterministic": True}
    )
    assert response.status_code == 200, response.text
    item = response.json()["data"][0]
    solo = tiny_pipeline.run(
        [SampleSpec(task="generate", prompt="a lighthouse", seed=5, width=128, height=128)]
    )
    assert item["rgb8_sha256"] == rgb8_sha256(solo[0].image)
    assert item["recipe"]["batch_size"] == 1


def test_seed_omitted_is_drawn_and_n_images_use_seed_plus_i(client: TestClient) -> None:
    response = client.post("/v1/generate", json={"prompt": "a boat", "size": "64x64", "n": 3})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    seeds = [d["seed"] for d in data]
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert len({d["rgb8_sha256"] for d in data}) == 3


def test_output_formats_and_metadata_strip(client: TestClient) -> None:
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        response = client.post(
            "/v1/generate", json={"prompt": "x", "size": "64x64", "seed": 1, "output_format": fmt}
        )
        assert response.status_code == 200, response.text
        assert base64.b64decode(response.json()["data"][0]["b64_json"]).startswith(magic)
    stripped = client.post(
        "/v1/generate", json={"prompt": "x", "size": "64x64", "seed": 1, "metadata": "strip"}
    )
    data = base64.b64decode(stripped.json()["data"][0]["b64_json"])
    assert read_recipe(data) is None
    assert stripped.json()["data"][0]["recipe"]["seed"] == 1  # the response still carries the recipe


def test_response_format_url_serves_the_file(client: TestClient) -> None:
    response = client.post(
        "/v1/generate", json={"prompt": "x", "size": "64x64", "seed": 3, "response_format": "url"}
    )
    item = response.json()["data"][0]
    assert item["b64_json"] is None
    file = client.get(item["url"])
    assert file.status_code == 200
    assert file.headers["content-type"] == "image/png"
    assert file.headers["x-seed"] == "3"
    with Image.open(io.BytesIO(file.content)) as img:
        assert rgb8_sha256(np.asarray(img.convert("RGB"))) == item["rgb8_sha256"]


def test_edit_multipart_and_json_give_the_same_bits(client: TestClient) -> None:
    source = png_bytes(96, 64, seed=1)
    fields = {"prompt": "make it blue", "seed": "9", "working_size": "128x128"}
    multipart = client.post("/v1/edit", data=fields, files={"image": ("src.png", source, "image/png")})
    assert multipart.status_code == 200, multipart.text
    as_json = client.post(
        "/v1/edit",
        json={
            "prompt": "make it blue",
            "seed": 9,
            "working_size": "128x128",
            "image": "data:image/png;base64," + base64.b64encode(source).decode(),
        },
    )
    assert as_json.status_code == 200, as_json.text
    a, b = multipart.json()["data"][0], as_json.json()["data"][0]
    assert (a["width"], a["height"]) == (96, 64)  # edits return the source size by default
    assert a["rgb8_sha256"] == b["rgb8_sha256"]
    assert a["recipe"]["task"] == "edit"
    assert a["recipe"]["working_size"] == "128x128"
    assert len(a["recipe"]["input_image_sha256"]) == 64


def test_openai_compatible_routes(client: TestClient) -> None:
    gen = client.post(
        "/v1/images/generations",
        json={
            "model": "tiny-dreamlite-mobile",
            "prompt": "a cat",
            "n": 1,
            "size": "64x64",
            "response_format": "b64_json",
            "output_format": "png",
            "quality": "auto",
        },
    )
    assert gen.status_code == 200, gen.text
    assert isinstance(gen.json()["created"], int)
    assert gen.json()["data"][0]["b64_json"]
    edit = client.post(
        "/v1/images/edits",
        data={"prompt": "add a hat", "size": "64x64", "working_size": "64x64", "seed": "2"},
        files={"image": ("a.png", png_bytes(64, 64), "image/png")},
    )
    assert edit.status_code == 200, edit.text
    assert edit.json()["data"][0]["width"] == 64


def test_models_health_and_openapi(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    details = models["data"][0]["details"]
    assert details["backend"] == "torch"
    assert details["dtype"] == "float32"
    assert details["weights_sha256"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/generate",
        "/v1/edit",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/models",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    examples = spec["components"]["schemas"]["GenerateRequest"].get("examples")
    assert examples
    assert examples[0]["prompt"]
