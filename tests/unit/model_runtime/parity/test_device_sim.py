"""Parity end to end on the tiny bundle: device-sim traces, verification, planted divergences.

The device simulator runs the bundle as a phone app would (onnxruntime + numpy only, the qnn EP on the
HTP emulator); the reference is computed by ``dreamlite parity verify`` on the same bundle and target.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model_runtime.parity.canonical import CanonicalRequest
from model_runtime.parity.trace import load_trace, parse_trace, record, save_trace
from tests.conftest import CASES, TINY_MODEL
from tests.unit.model_runtime.export.tiny_bundle import EXPORT_ARGS, SIZE, STEPS

TARGET = "sm8650"


def dreamlite(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dreamlite", *args], capture_output=True, text=True, timeout=timeout
    )


def bundle_id(bundle: Path) -> str:
    import hashlib

    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


def write_request(path: Path, request: CanonicalRequest) -> Path:
    path.write_bytes(request.canonical_json())
    return path


def device_sim(bundle: Path, request_file: Path, out: Path, image: Path | None = None) -> dict[str, Any]:
    args = [
        "device-sim",
        "--bundle",
        str(bundle),
        "--target",
        TARGET,
        "--request",
        str(request_file),
        "--out",
        str(out),
    ]
    if image is not None:
        args += ["--image", str(image)]
    proc = dreamlite(*args)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def verify(trace: Path, bundle: Path, *extra: str) -> tuple[int, list[dict[str, Any]], str]:
    reports = trace.with_name(trace.stem + "-reports.json")
    proc = dreamlite("parity", "verify", str(trace), "--bundle", str(bundle), "--json", str(reports), *extra)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(reports.read_text()), proc.stdout


@pytest.fixture(scope="module")
def gen_request(
    built_bundle: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, CanonicalRequest]:
    bundle, _ = built_bundle
    req = CanonicalRequest.create(
        task="generate",
        prompt="a red apple on a table",
        seed=21,
        width=SIZE[0],
        height=SIZE[1],
        steps=STEPS,
        bundle_id=bundle_id(bundle),
        target=TARGET,
    )
    return write_request(tmp_path_factory.mktemp("req") / "gen.json", req), req


@pytest.fixture(scope="module")
def gen_trace(
    built_bundle: tuple[Path, dict[str, Any]], gen_request: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    bundle, _ = built_bundle
    out = tmp_path_factory.mktemp("dev") / "gen-trace.json"
    result = device_sim(bundle, gen_request[0], out)
    assert result["provider"] == "QNNExecutionProvider"
    return out


def test_device_sim_generate_verifies_bit_exact_on_every_stage(
    built_bundle: Any, gen_trace: Path, tmp_path: Path
) -> None:
    bundle, _ = built_bundle
    status, reports, out = verify(
        gen_trace,
        bundle,
        "--backend",
        "qnn",
        "--target",
        TARGET,
        "--expect",
        "bit_exact",
        "--report-dir",
        str(tmp_path / "html"),
    )
    assert status == 0, out
    report = reports[0]
    assert report["verdict"] == "bit_exact"
    assert all(s["verdict"] == "bit_exact" for s in report["stages"])
    assert len(report["stages"]) == 4 + 2 * STEPS + 2
    assert (tmp_path / "html" / "gen-trace.html").is_file()


def test_device_sim_edit_verifies_bit_exact(built_bundle: Any, tmp_path: Path) -> None:
    bundle, _ = built_bundle
    source = CASES / "edit_1024" / "source.png"
    image = np.asarray(Image.open(source).convert("RGB"))
    req = CanonicalRequest.create(
        task="edit",
        prompt="make the sky purple",
        seed=3,
        width=image.shape[1],
        height=image.shape[0],
        steps=STEPS,
        image=image,
        working_size=SIZE,
        bundle_id=bundle_id(bundle),
        target=TARGET,
    )
    trace = tmp_path / "edit-trace.json"
    device_sim(bundle, write_request(tmp_path / "edit.json", req), trace, image=source)
    doc, tensors = load_trace(trace)
    assert doc.stage_names[1:4] == ["source_vlm", "source_vae", "vlm_pixels"]
    assert tensors is not None
    assert tensors["output"].shape == image.shape
    status, reports, out = verify(
        trace, bundle, "--backend", "qnn", "--target", TARGET, "--image", str(source), "--expect", "bit_exact"
    )
    assert status == 0, out
    assert reports[0]["verdict"] == "bit_exact"


def test_wrong_seed_on_the_device_is_named_at_the_noise_stage(
    built_bundle: Any, gen_request: Any, tmp_path: Path
) -> None:
    bundle, _ = built_bundle
    _, req = gen_request
    wrong = req.model_copy(update={"seed": str(int(req.seed) + 1)})
    trace = tmp_path / "wrong-seed.json"
    device_sim(bundle, write_request(tmp_path / "wrong.json", wrong), trace)
    doc, tensors = load_trace(trace)
    claimed = parse_trace(
        {**doc.model_dump(mode="json"), "request": req.model_dump(mode="json"), "request_id": req.request_id}
    )
    save_trace(trace, claimed, tensors)  # the device claims the original request
    status, reports, _ = verify(trace, bundle, "--backend", "qnn", "--target", TARGET)
    assert status == 1
    assert reports[0]["verdict"] == "mismatch"
    assert reports[0]["first_divergent_stage"] == "noise"
    assert reports[0]["first_mismatch_stage"] == "noise"


def test_perturbed_step_latent_is_named_and_replayed(
    built_bundle: Any, gen_trace: Path, tmp_path: Path
) -> None:
    bundle, _ = built_bundle
    doc, tensors = load_trace(gen_trace)
    assert tensors is not None
    tensors["step0.latents"] = tensors["step0.latents"].copy()
    tensors["step0.latents"][0, 1, 2, 3] += 3.0
    data = doc.model_dump(mode="json")
    data["stages"] = [record(s["name"], tensors[s["name"]]).model_dump(mode="json") for s in data["stages"]]
    trace = tmp_path / "perturbed.json"
    save_trace(trace, parse_trace(data), tensors)
    status, reports, out = verify(trace, bundle, "--backend", "qnn", "--target", TARGET, "--replay")
    assert status == 1, out
    report = reports[0]
    assert report["first_divergent_stage"] == "step0.latents"
    assert report["first_mismatch_stage"] == "step0.latents"
    assert [s["verdict"] for s in report["stages"][:5]] == ["bit_exact"] * 5
    assert report["replay"]["outcome"] == "stage_diverges"


def test_cpu_ep_qdq_reference_is_never_bit_exact(built_bundle: Any, gen_trace: Path) -> None:
    """A genuinely different executor (the same QDQ graphs on the CPU EP) vs the emulator: tolerance only."""
    bundle, _ = built_bundle
    _, reports, out = verify(gen_trace, bundle, "--backend", "onnx", "--precision", "w8a16")
    report = reports[0]
    assert report["verdict"] in ("within_tolerance", "mismatch"), out
    assert (
        report["first_divergent_stage"] == "step0.unet_out"
    )  # tokens, text, noise and the zero condition agree
    assert any(d["field"] == "executor.provider" for d in report["environment_diff"])
    print(json.dumps({s["name"]: [s["verdict"], s["pct_of_range"], s["psnr_db"]] for s in report["stages"]}))


def test_fp16_contexts_verify_closer_to_the_torch_server_than_w8a16(
    built_bundle: Any, gen_request: Any, gen_trace: Path, tmp_path: Path
) -> None:
    """The server's own reference (torch, the default backend) against the device's two context precisions."""
    bundle, _ = built_bundle
    fp16 = tmp_path / "gen-fp16.json"
    proc = dreamlite(
        "device-sim", "--bundle", str(bundle), "--target", TARGET, "--precision", "fp16",
        "--request", str(gen_request[0]), "--out", str(fp16),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    image_db = {}
    for name, trace in (("fp16", fp16), ("w8a16", gen_trace)):
        _, reports, out = verify(trace, bundle, "--model", str(TINY_MODEL))  # torch backend, float32
        (report,) = reports
        assert report["first_divergent_stage"] in ("text_features", "step0.unet_out"), out
        stages = {st["name"]: st for st in report["stages"]}
        image_db[name] = stages["decoded"]["psnr_db"]
    print("decoded image vs torch fp32 (dB):", image_db)
    assert image_db["fp16"] > image_db["w8a16"] + 10.0, image_db


def test_device_sim_needs_portable_noise(built_bundle: Any, gen_request: Any, tmp_path: Path) -> None:
    bundle, _ = built_bundle
    _, req = gen_request
    torch_noise = req.model_copy(update={"noise": "torch-cpu"})
    proc = dreamlite(
        "device-sim",
        "--bundle",
        str(bundle),
        "--request",
        str(write_request(tmp_path / "r.json", torch_noise)),
        "--out",
        str(tmp_path / "t.json"),
    )
    assert proc.returncode == 2
    assert "dln1" in proc.stderr


@pytest.mark.slow
def test_changed_unet_weight_bundle_diverges_at_the_first_unet_call(
    built_bundle: Any, tmp_path: Path
) -> None:
    """A phone running a bundle exported from a model with one UNet weight changed."""
    from safetensors.numpy import load_file, save_file

    from model_runtime.export.__main__ import main as export_main

    bundle, _ = built_bundle
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.chmod(0o644)
    tensors = load_file(str(weights))
    name = "mid_block.resnets.0.conv2.pointwise.weight"
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] += 0.5
    save_file(tensors, str(weights))
    changed = tmp_path / "bundle"
    args = list(EXPORT_ARGS)
    args[args.index("--model") + 1] = str(model)
    assert export_main([*args, "--out", str(changed)]) == 0
    req = CanonicalRequest.create(
        task="generate",
        prompt="a red apple on a table",
        seed=21,
        width=SIZE[0],
        height=SIZE[1],
        steps=STEPS,
        target=TARGET,
    )
    trace = tmp_path / "changed.json"
    device_sim(changed, write_request(tmp_path / "req.json", req), trace)
    _, reports, _ = verify(trace, bundle, "--backend", "qnn", "--target", TARGET)
    report = reports[0]
    assert report["first_divergent_stage"] == "step0.unet_out"
    assert report["verdict"] != "bit_exact"
    assert any(d["field"] == "executor.bundle_id" for d in report["environment_diff"])


def test_parity_request_command_pins_the_bundle(built_bundle: Any, tmp_path: Path) -> None:
    bundle, _ = built_bundle
    out = tmp_path / "req.json"
    proc = dreamlite(
        "parity",
        "request",
        "--prompt",
        "cafe\u0301",
        "--seed",
        "7",
        "--bundle",
        str(bundle),
        "--target",
        TARGET,
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    from model_runtime.parity.canonical import load_request

    req = load_request(out.read_bytes())
    assert req.prompt == "café"
    assert req.bundle_id == bundle_id(bundle)
    assert (req.working_width, req.working_height, req.noise) == (SIZE[0], SIZE[1], "dln1")
    assert json.loads(proc.stdout)["request_id"] == req.request_id
    missing = dreamlite(
        "parity", "request", "--task", "edit", "--prompt", "x", "--bundle", str(bundle), "--out", str(out)
    )
    assert missing.returncode == 2
    assert "`--image`" in missing.stderr
