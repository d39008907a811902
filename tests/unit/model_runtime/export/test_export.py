"""``dreamlite export`` on the tiny conformance model: what the bundle and its manifest contain."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from model_runtime.bundle import MANIFEST_NAME, f32_from_hex, open_bundle
from model_runtime.export.__main__ import main
from model_runtime.sampler import compute_schedule
from tests.unit.model_runtime.export.tiny_bundle import SEQ_LEN, SIZE, STEPS, TINY_MODEL

Bundle = tuple[Path, dict[str, Any]]
# The first test to ask for the shared bundle builds it (export + quantize + QNN compile, ~2 min on 2 idle
# cores; later runs reuse the cache), so these modules allow more than the default per-test timeout.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def manifest(built_bundle: Bundle) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((built_bundle[0] / MANIFEST_NAME).read_text())
    return data


def test_bundle_id_is_the_manifest_hash_and_every_file_verifies(built_bundle: Bundle) -> None:
    bundle_dir, summary = built_bundle
    raw = (bundle_dir / MANIFEST_NAME).read_bytes()
    assert summary["bundle_id"] == hashlib.sha256(raw).hexdigest()
    bundle = open_bundle(bundle_dir, expected_id=summary["bundle_id"])  # hashes every file
    assert "text_encoder/model.safetensors" in bundle.manifest.files
    assert "tokenizer/tokenizer.json" in bundle.manifest.files
    assert "processor/preprocessor_config.json" in bundle.manifest.files
    assert "noise/dln1_golden.json" in bundle.manifest.files


def test_graphs_have_the_official_static_signature(manifest: dict[str, Any], built_bundle: Bundle) -> None:
    w, h = SIZE
    by_key = {(g["component"], g["precision"]): g for g in manifest["graphs"]}
    assert set(by_key) == {
        (c, p) for c in ("unet", "vae_decoder", "vae_encoder") for p in ("fp32", "fp16", "w8a16")
    }
    unet = by_key[("unet", "fp32")]
    assert unet["opset"] == 17
    assert [(i["name"], i["shape"], i["dtype"]) for i in unet["inputs"]] == [
        ("sample", [1, 4, h // 8, 2 * w // 8], "float32"),
        ("timestep", [1], "float32"),
        ("encoder_hidden_states", [1, SEQ_LEN, 64], "float32"),
        ("encoder_attention_mask", [1, SEQ_LEN], "float32"),
        ("time_ids", [1, 2], "float32"),
    ]
    assert unet["outputs"] == [
        {"name": "noise_pred", "shape": [1, 4, h // 8, 2 * w // 8], "dtype": "float32"}
    ]
    assert by_key[("vae_decoder", "fp32")]["outputs"][0]["shape"] == [1, 3, h, w]
    assert by_key[("vae_encoder", "fp32")]["outputs"][0]["shape"] == [1, 4, h // 8, w // 8]
    # fp16 keeps fp32 I/O; w8a16 is a QDQ graph at opset 21 (16-bit Q/DQ).
    assert by_key[("unet", "fp16")]["inputs"] == unet["inputs"]
    assert by_key[("unet", "w8a16")]["opset"] == 21
    fp32 = onnx.load(str(built_bundle[0] / unet["path"]))
    ops = {n.op_type for n in fp32.graph.node}
    assert "Tile" in ops
    assert "Softmax" in ops
    assert not ops & {"Shape", "ConstantOfShape", "Expand"} - {"Expand"}  # shape arithmetic folded
    half = onnx.load(str(built_bundle[0] / by_key[("unet", "fp16")]["path"]))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    qdq = onnx.load(str(built_bundle[0] / by_key[("unet", "w8a16")]["path"]))
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) > 100
    # GroupNorm is written without reshapes for the HTP (fuse.groupnorm_as_reductions); fp32 keeps the chain.
    assert "InstanceNormalization" in ops
    assert "InstanceNormalization" not in {n.op_type for n in qdq.graph.node}


def test_schedule_tables_are_the_samplers_bits(manifest: dict[str, Any]) -> None:
    config = json.loads((TINY_MODEL / "scheduler" / "scheduler_config.json").read_text())
    tables = {(s["width"], s["height"], s["steps"]): s for s in manifest["schedules"]}
    assert set(tables) == {(SIZE[0], SIZE[1], STEPS), (SIZE[0], SIZE[1], 4)}
    for (w, h, n), entry in tables.items():
        ref = compute_schedule(config, w, h, n)
        assert f32_from_hex(entry["sigmas_f32"]).tobytes() == ref.sigmas.tobytes()
        assert f32_from_hex(entry["timesteps_f32"]).tobytes() == ref.timesteps.tobytes()


def test_manifest_records_provenance_quantization_qnn_and_parity(manifest: dict[str, Any]) -> None:
    assert manifest["noise"]["spec"] == "dln1"
    assert manifest["text"]["seq_len"] == SEQ_LEN
    assert manifest["text"]["encoder"]["runtime"] == "onnx"
    tok = TINY_MODEL / "tokenizer" / "tokenizer.json"
    assert manifest["text"]["tokenizer_sha256"] == hashlib.sha256(tok.read_bytes()).hexdigest()
    src = manifest["model"]["source"]["files"]
    unet_weights = TINY_MODEL / "unet" / "diffusion_pytorch_model.safetensors"
    assert (
        src["unet/diffusion_pytorch_model.safetensors"]
        == hashlib.sha256(unet_weights.read_bytes()).hexdigest()
    )
    assert manifest["pipeline"]["drop_idx"] == {"generate": 34, "edit": 64}
    assert manifest["pipeline"]["default_size"] == list(SIZE)  # 1024² was not exported
    w8a16 = manifest["quantization"]["w8a16"]
    assert (w8a16["settings"]["activation_type"], w8a16["settings"]["weight_type"]) == ("QUInt16", "QUInt8")
    assert w8a16["calibration"]["counts"]["unet/64x64"] >= 16  # every step of every calibration run
    assert w8a16["settings"]["groupnorm"] == "reductions"
    assert w8a16["graphs"]["unet/64x64"]["groupnorm_rewritten"] > 0
    assert w8a16["graphs"]["vae_decoder/64x64"]["groupnorm_rewritten"] == 0  # TAESD has no GroupNorm
    assert manifest["reference_session"]["graph_optimization_level"] == "ORT_ENABLE_BASIC"
    assert manifest["runtime"]["onnxruntime"]
    (target,) = manifest["targets"]
    assert (target["name"], target["soc_model"], target["htp_arch"]) == ("sm8650", 57, 75)
    assert target["session_options"] == {"session.disable_cpu_ep_fallback": "1"}
    assert manifest["qnn"]["versions"]["qnn_sdk"]
    for ctx in target["contexts"]:
        assert ctx["binaries"]
        assert all(b.endswith("_qnn.bin") for b in ctx["binaries"])
        assert ctx["path"].endswith(f".{ctx['precision']}_ctx.onnx")
    by_precision = {
        p: {c["component"] for c in target["contexts"] if c["precision"] == p} for p in ("w8a16", "fp16")
    }
    assert by_precision["w8a16"] == by_precision["fp16"] == {"unet", "vae_decoder", "vae_encoder"}
    graphs = manifest["parity"]["graphs"]
    assert set(graphs) == {"fp32", "fp16", "w8a16", "qnn:sm8650", "qnn:sm8650/fp16"}
    assert graphs["fp32"]["unet/64x64"]["max_abs"] < 1e-4
    for report in graphs["fp32"].values():
        assert report["psnr_db"] >= 60.0
    # Per-graph decoded-image PSNR (measured: fp16 ≥ 48.7, w8a16 CPU EP ≥ 37.8, HTP emulator ≥ 37.9 dB; the
    # fp16 contexts on the emulator 38.9 dB for this random model's UNet: the HTP runs every op in fp16,
    # the time embedding's sin/cos of t·freq too, which the CPU EP fp16 graph keeps in fp32). The HTP floor
    # guards the GroupNorm rewrite: with the reshape form the emulator's UNet graph was at 29.8 dB.
    floors = (("fp16", 45.0), ("w8a16", 33.0), ("qnn:sm8650", 33.0), ("qnn:sm8650/fp16", 35.0))
    for precision, floor_db in floors:
        for key, report in graphs[precision].items():
            assert np.isfinite(report["max_abs"]), (precision, key, report)
            assert report["psnr_db"] >= floor_db, (precision, key, report)


def test_bad_options_end_with_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", str(TINY_MODEL), "--out", str(tmp_path / "b")]
    for extra, needle in (
        (["--precision", "fp32,int4"], "`--precision`"),
        (["--targets", "sm0000"], "`--targets`"),
        (["--qnn-precision", "w8a16,int4"], "`--qnn-precision`"),
        (["--size", "65x64"], "`--size`"),
        (["--precision", "fp32", "--targets", "sm8650"], "needs the w8a16 precision"),
        (["--qdq-groupnorm", "fused"], "`--qdq-groupnorm`"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("export: error:"), err
        assert needle in err, err
        assert "\n" not in err, err
    assert not (tmp_path / "b").exists()
