"""onnx backend on the tiny bundle: parity with torch per precision, contract facts, bad bundles refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_runtime import InvalidInputError, ModelLoadError, load_pipeline
from model_runtime.backends.onnx_backend import load_onnx_backend
from model_runtime.recipe import build_recipe
from model_runtime.sampler import compute_schedule
from model_runtime.types import SampleSpec
from tests.unit.model_runtime.backends.parity_cases import (
    PSNR_MIN_FP16_DB,
    PSNR_MIN_W8A16_DB,
    cases,
    compare,
    run_cases,
)
from tests.unit.model_runtime.export.tiny_bundle import SIZE, STEPS, TINY_MODEL

Bundle = tuple[Path, dict[str, Any]]
# The first test to ask for the shared bundle builds it (export + quantize + QNN compile, ~2 min on 2 idle
# cores; later runs reuse the cache), so these modules allow more than the default per-test timeout.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def torch_reference(tiny_pipeline: Any) -> dict[str, Any]:
    return run_cases(tiny_pipeline)


@pytest.fixture(scope="module")
def onnx_fp32(built_bundle: Bundle) -> Any:
    return load_pipeline(built_bundle[0], backend="onnx", precision="fp32")


def test_fp32_graphs_match_torch(onnx_fp32: Any, torch_reference: dict[str, Any]) -> None:
    report = compare(run_cases(onnx_fp32), torch_reference)
    print("onnx fp32 vs torch fp32:", report)
    for task in ("generate", "edit"):
        assert report[task]["latent_max_abs"] <= 1e-4, (task, report)


@pytest.mark.parametrize(
    ("precision", "floor_db"), [("fp16", PSNR_MIN_FP16_DB), ("w8a16", PSNR_MIN_W8A16_DB)]
)
def test_reduced_precision_images_stay_close(
    built_bundle: Bundle, torch_reference: dict[str, Any], precision: str, floor_db: float
) -> None:
    pipeline = load_pipeline(built_bundle[0], backend="onnx", precision=precision)
    assert pipeline.backend.info.provider == "CPUExecutionProvider"
    report = compare(run_cases(pipeline), torch_reference)
    print(f"onnx {precision} (CPU EP) vs torch fp32:", report)
    for task in ("generate", "edit"):
        assert report[task]["psnr_db"] >= floor_db, (task, report)


def test_backend_reports_bundle_graphs_and_provider(onnx_fp32: Any, built_bundle: Bundle) -> None:
    _bundle, summary = built_bundle
    info = onnx_fp32.backend.info
    assert info.name == "onnx"
    assert info.provider == "CPUExecutionProvider"
    assert info.details["bundle_id"] == summary["bundle_id"] == onnx_fp32.backend.artifact_sha256()
    assert set(info.details["graph_sha256"]) == {"unet/64x64", "vae_decoder/64x64", "vae_encoder/64x64"}
    assert info.details["reference_session"] is True
    assert info.details["text_encoder"]["runtime"] == "onnx"
    result = onnx_fp32.run([cases()[0]])[0]
    recipe = build_recipe(result, onnx_fp32)
    assert recipe["bundle_id"] == summary["bundle_id"]
    assert recipe["graph_sha256"]["unet/64x64"] == info.details["graph_sha256"]["unet/64x64"]
    assert recipe["provider"] == "CPUExecutionProvider"


def test_schedule_is_read_from_the_manifest_bit_exactly(
    onnx_fp32: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    config = json.loads((TINY_MODEL / "scheduler" / "scheduler_config.json").read_text())
    expected = compute_schedule(config, SIZE[0], SIZE[1], STEPS)

    def forbidden(*_args: Any) -> None:
        raise AssertionError("a bundle backend must not recompute the schedule")

    monkeypatch.setattr("model_runtime.sampler._cached_schedule", forbidden)
    got = onnx_fp32.backend.schedule(SIZE[0], SIZE[1], STEPS)
    assert got.sigmas.view(np.uint32).tolist() == expected.sigmas.view(np.uint32).tolist()
    assert got.timesteps.view(np.uint32).tolist() == expected.timesteps.view(np.uint32).tolist()
    assert got.mu == expected.mu
    with pytest.raises(InvalidInputError, match="`steps` has no schedule table"):
        onnx_fp32.backend.schedule(SIZE[0], SIZE[1], 7)


def test_sizes_outside_the_bundle_are_refused(onnx_fp32: Any) -> None:
    assert onnx_fp32.backend.supported_sizes() == [SIZE]
    with pytest.raises(InvalidInputError, match=r"`size` is not compiled into this bundle.*64x64"):
        onnx_fp32.plan(SampleSpec(task="generate", prompt="x", seed=1, width=96, height=64))


def test_batches_run_row_by_row_through_batch_one_graphs(onnx_fp32: Any) -> None:
    specs = cases()
    together = onnx_fp32.run(specs)
    alone = [onnx_fp32.run([s])[0] for s in specs]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a.image, b.image)


def test_unknown_precision_and_dtype_are_refused(built_bundle: Bundle) -> None:
    with pytest.raises(InvalidInputError, match="`precision`"):
        load_onnx_backend(built_bundle[0], precision="int4")
    with pytest.raises(InvalidInputError, match="`dtype`"):
        load_onnx_backend(built_bundle[0], dtype="bfloat16")


def test_tampered_graph_is_refused_naming_the_file(built_bundle: Bundle, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(built_bundle[0], copy)
    graph = copy / "graphs" / "64x64" / "unet.fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[-100] ^= 0x01  # one flipped bit inside the weights
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"graphs/64x64/unet\.fp32\.onnx: sha256 mismatch"):
        load_onnx_backend(copy)


def test_pinned_bundle_id_must_match(built_bundle: Bundle) -> None:
    with pytest.raises(ModelLoadError, match="bundle id"):
        load_onnx_backend(built_bundle[0], bundle_id="0" * 64)


@pytest.mark.gpu
def test_cuda_execution_provider(built_bundle: Bundle, torch_reference: dict[str, Any]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here")
    pipeline = load_pipeline(built_bundle[0], backend="onnx", precision="fp32", device="cuda")
    assert pipeline.backend.info.provider == "CUDAExecutionProvider"
    report = compare(run_cases(pipeline), torch_reference)
    for task in ("generate", "edit"):
        assert report[task]["latent_max_abs"] <= 1e-3, report


def test_generate_command_runs_a_bundle_and_names_it_in_the_recipe(
    built_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_runtime.cli import main
    from model_runtime.recipe import read_recipe

    out = tmp_path / "x.png"
    args = [
        "generate",
        "--backend",
        "onnx",
        "--bundle",
        str(built_bundle[0]),
        "--precision",
        "w8a16",
        "--prompt",
        "a red kite",
        "--size",
        "64x64",
        "--steps",
        str(STEPS),
        "--noise",
        "dln1",
        "--out",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    recipe = read_recipe(out.read_bytes())
    assert recipe is not None
    assert recipe["bundle_id"] == built_bundle[1]["bundle_id"]
    assert recipe["backend"] == "onnx"
    assert recipe["provider"] == "CPUExecutionProvider"
    assert set(recipe["graph_sha256"]) >= {"unet/64x64"}
