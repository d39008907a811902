"""Parity core on the torch executor: canonical requests, traces, verdicts, planted divergences, replay."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from model_runtime import Pipeline, load_pipeline
from model_runtime.errors import InvalidInputError
from model_runtime.parity.canonical import CanonicalRequest, load_request
from model_runtime.parity.compare import Tolerances, compare_traces, ssim
from model_runtime.parity.replay import replay_report
from model_runtime.parity.runner import run_request
from model_runtime.parity.tensors import estimated_l2, fingerprint, tensor_sha256
from model_runtime.parity.trace import load_trace, parse_trace, save_trace
from tests.conftest import TINY_MODEL

GEN = CanonicalRequest.create(task="generate", prompt="a red apple", seed=11, width=128, height=128)


def test_request_id_is_canonical() -> None:
    a = CanonicalRequest.create(task="generate", prompt="cafe\u0301", seed=1, width=128, height=128)
    b = CanonicalRequest.create(task="generate", prompt="café", seed=1, width=128, height=128)
    assert a.prompt == b.prompt == "café"
    assert a.request_id == b.request_id
    assert load_request(a.canonical_json()).request_id == a.request_id
    variants = [
        CanonicalRequest.create(task="generate", prompt="café", seed=2, width=128, height=128),
        CanonicalRequest.create(task="generate", prompt="café", seed=1, width=128, height=128, steps=5),
        CanonicalRequest.create(
            task="generate", prompt="café", seed=1, width=128, height=128, noise="torch-cpu"
        ),
        CanonicalRequest.create(
            task="generate", prompt="café", seed=1, width=128, height=128, target="sm8650"
        ),
    ]
    assert len({a.request_id, *(v.request_id for v in variants)}) == 5
    assert b'"seed":"1"' in a.canonical_json()


def test_request_validation() -> None:
    with pytest.raises(InvalidInputError, match="seed"):
        load_request({**GEN.model_dump(), "seed": "-3"})
    with pytest.raises(InvalidInputError, match="prompt"):
        load_request({**GEN.model_dump(), "prompt": "cafe\u0301"})
    image = np.zeros((8, 8, 3), np.uint8)
    req = CanonicalRequest.create(
        task="edit", prompt="x", seed=0, width=8, height=8, image=image, working_size=(128, 128)
    )
    with pytest.raises(InvalidInputError, match="does not match"):
        req.to_sample_spec(np.ones((8, 8, 3), np.uint8))
    assert req.to_sample_spec(image).working_size == (128, 128)


def test_tensor_hash_covers_dtype_shape_and_bits() -> None:
    x = np.arange(6, dtype=np.float32)
    hashes = {
        tensor_sha256(x),
        tensor_sha256(x.reshape(2, 3)),
        tensor_sha256(x.astype(np.float64)),
        tensor_sha256(x + 1e-7),
    }
    assert len(hashes) == 4
    assert tensor_sha256(x) == tensor_sha256(x.copy())


def test_fingerprint_estimates_the_l2_distance() -> None:
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(20):
        a = rng.standard_normal((1, 4, 32, 32)).astype(np.float32)
        b = a + rng.standard_normal(a.shape).astype(np.float32) * rng.uniform(0.001, 0.1)
        ratios.append(estimated_l2(fingerprint(a), fingerprint(b)) / float(np.linalg.norm(a - b)))
    assert 0.8 < float(np.median(ratios)) < 1.2
    assert min(ratios) > 0.4
    assert max(ratios) < 1.7
    assert estimated_l2(fingerprint(a), fingerprint(a)) == 0.0


def test_ssim_sanity() -> None:
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, 64)
    img = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=2).astype(np.uint8)  # smooth: structure matters
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img.astype(int) + rng.integers(-40, 41, img.shape), 0, 255).astype(np.uint8)
    assert ssim(img, noisy) < 0.95


@pytest.fixture(scope="module")
def reference(tiny_pipeline: Pipeline) -> tuple[Any, dict[str, np.ndarray]]:
    return run_request(tiny_pipeline, GEN)


def test_same_executor_is_bit_exact(tiny_pipeline: Pipeline, reference: Any, tmp_path: Path) -> None:
    ref, ref_t = reference
    assert ref.stage_names[:4] == ["tokens", "text_features", "noise", "condition_latent"]
    assert ref.stage_names[-2:] == ["decoded", "image"]
    again, again_t = run_request(tiny_pipeline, GEN, executor="device")
    files = save_trace(tmp_path / "dev.json", again, again_t)
    assert [f.suffix for f in files] == [".json", ".npz"]
    loaded, loaded_t = load_trace(tmp_path / "dev.json")
    report = compare_traces(ref, loaded, reference_tensors=ref_t, device_tensors=loaded_t)
    assert report.verdict == "bit_exact"
    assert report.first_divergent_stage is None
    assert [d["field"] for d in report.environment_diff] == ["executor.name"]


def _device_with(
    pipeline: Pipeline, request: CanonicalRequest, claimed: CanonicalRequest
) -> tuple[Any, dict[str, np.ndarray]]:
    """A device run of ``request`` that claims to be ``claimed`` (a bug on the device side)."""
    trace, tensors = run_request(pipeline, request, executor="device")
    data = trace.model_dump(mode="json")
    data["request"] = claimed.model_dump(mode="json")
    data["request_id"] = claimed.request_id
    return parse_trace(data), tensors


def test_wrong_seed_diverges_at_noise(tiny_pipeline: Pipeline, reference: Any) -> None:
    ref, ref_t = reference
    wrong = CanonicalRequest.create(task="generate", prompt="a red apple", seed=12, width=128, height=128)
    dev, dev_t = _device_with(tiny_pipeline, wrong, GEN)
    report = compare_traces(ref, dev, reference_tensors=ref_t, device_tensors=dev_t)
    assert report.verdict == "mismatch"
    assert report.first_divergent_stage == "noise"
    assert report.first_mismatch_stage == "noise"
    assert report.stages[0].verdict == "bit_exact"  # tokens still agree


class PerturbOnce:
    """Adds a small offset to the denoiser output of one step (a faulty kernel on the device)."""

    def __init__(self, denoiser: Any, step: int, delta: float) -> None:
        self.denoiser, self.step, self.delta, self.calls = denoiser, step, delta, 0

    def __call__(self, *args: Any) -> np.ndarray:
        out = self.denoiser(*args)
        if self.calls == self.step:
            out = out.copy()
            out[0, 0, 0, 0] += self.delta
        self.calls += 1
        return out


def test_perturbed_step_names_the_step_and_replay_separates_cause_from_inheritance(
    tiny_pipeline: Pipeline, reference: Any
) -> None:
    ref, ref_t = reference
    original = tiny_pipeline.backend.denoiser
    tiny_pipeline.backend.denoiser = PerturbOnce(original, step=1, delta=0.5)  # type: ignore[misc]
    try:
        dev, dev_t = run_request(tiny_pipeline, GEN, executor="device")
    finally:
        tiny_pipeline.backend.denoiser = original  # type: ignore[misc]
    report = compare_traces(ref, dev, reference_tensors=ref_t, device_tensors=dev_t)
    assert report.first_divergent_stage == "step1.unet_out"
    before = [
        s
        for s in report.stages
        if s.name in ("tokens", "text_features", "noise", "step0.unet_out", "step0.latents")
    ]
    assert all(s.verdict == "bit_exact" for s in before)
    own = replay_report(tiny_pipeline, GEN, "step1.unet_out", dev_t)
    assert own["outcome"] == "stage_diverges"
    inherited = replay_report(tiny_pipeline, GEN, "step2.unet_out", dev_t)
    assert inherited["outcome"] == "inherited"
    assert inherited["comparison"]["verdict"] == "bit_exact"
    assert replay_report(tiny_pipeline, GEN, "step1.latents", dev_t)["outcome"] == "inherited"


def test_changed_unet_weight_diverges_at_the_first_unet_call(reference: Any, tmp_path: Path) -> None:
    ref, ref_t = reference
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.chmod(0o644)
    tensors = load_file(str(weights))
    name = "up_blocks.0.resnets.0.conv2.pointwise.weight"
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] += 0.05
    save_file(tensors, str(weights))
    changed = load_pipeline(model)
    dev, dev_t = run_request(changed, GEN, executor="device")
    report = compare_traces(ref, dev, reference_tensors=ref_t, device_tensors=dev_t)
    assert report.first_divergent_stage == "step0.unet_out"
    assert report.verdict in ("within_tolerance", "mismatch")
    reference_pipeline = load_pipeline(TINY_MODEL)
    replayed = replay_report(reference_pipeline, GEN, "step0.unet_out", dev_t)
    assert replayed["outcome"] in ("stage_differs_within_tolerance", "stage_diverges")
    assert replay_report(reference_pipeline, GEN, "step0.latents", dev_t)["outcome"] == "inherited"


def test_fingerprints_alone_estimate_the_error(tiny_pipeline: Pipeline, reference: Any) -> None:
    ref, ref_t = reference
    original = tiny_pipeline.backend.denoiser
    tiny_pipeline.backend.denoiser = PerturbOnce(original, step=3, delta=1e-3)  # type: ignore[misc]
    try:
        small, _ = run_request(tiny_pipeline, GEN, executor="device")
    finally:
        tiny_pipeline.backend.denoiser = original  # type: ignore[misc]
    report = compare_traces(ref, small, reference_tensors=ref_t, device_tensors=None)
    stage = next(s for s in report.stages if s.name == "step3.unet_out")
    assert stage.estimated
    assert stage.verdict == "within_tolerance"
    strict = compare_traces(ref, small, tolerances=Tolerances(estimated_rel_rmse=1e-9))
    assert next(s for s in strict.stages if s.name == "step3.unet_out").verdict == "mismatch"


def test_edit_request_traces_the_source_stages(tiny_pipeline: Pipeline) -> None:
    image = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    req = CanonicalRequest.create(
        task="edit", prompt="make it blue", seed=5, width=60, height=40, image=image, working_size=(128, 128)
    )
    trace, tensors = run_request(tiny_pipeline, req, image=image)
    assert trace.stage_names[:4] == ["tokens", "source_vlm", "source_vae", "vlm_pixels"]
    assert tensors["output"].shape == (40, 60, 3)
    assert tensors["image"].shape == (128, 128, 3)
    assert (
        replay_report(tiny_pipeline, req, "condition_latent", tensors)["comparison"]["verdict"] == "bit_exact"
    )
    assert replay_report(tiny_pipeline, req, "text_features", tensors)["comparison"]["verdict"] == "bit_exact"


def test_cli_vectors_checks_a_port_file(tmp_path: Path) -> None:
    import json

    from model_runtime.noise_dln1 import load_golden_file

    good = tmp_path / "good.json"
    good.write_text(json.dumps(load_golden_file()))
    cmd = [sys.executable, "-m", "dreamlite", "parity", "vectors", "--file"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout
    data = load_golden_file()
    data["normal"][0]["float32_hex"][3] = "00000000"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    fail = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, check=False)
    assert fail.returncode == 1
    assert "FAIL" in fail.stdout
