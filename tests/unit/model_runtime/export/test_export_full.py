"""Slow: a full export (two QNN targets, end-to-end parity through every backend) of the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_runtime.bundle import MANIFEST_NAME, open_bundle
from model_runtime.export.__main__ import main
from tests.unit.model_runtime.export.tiny_bundle import TINY_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_full_export_with_two_targets_and_e2e_parity(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = [
        "--model",
        str(TINY_MODEL),
        "--out",
        str(out),
        "--size",
        "64x64",
        "--targets",
        "sm8650,sm8750",
        "--qnn-precision",
        "w8a16,fp16",
        "--calibration-prompts",
        "2",
        "--parity",
        "full",
    ]
    assert main(args) == 0
    bundle = open_bundle(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert [(t.name, t.soc_model, t.htp_arch) for t in bundle.manifest.targets] == [
        ("sm8650", 57, 75),
        ("sm8750", 69, 79),
    ]
    e2e = manifest["parity"]["e2e"]
    qnn = {"qnn:sm8650", "qnn:sm8750", "qnn:sm8650/fp16", "qnn:sm8750/fp16"}
    assert set(e2e) == {"fp32", "fp16", "w8a16", *qnn}
    for task in ("generate", "edit"):
        assert e2e["fp32"]["64x64"][task]["latent_max_abs"] <= 1e-4
        assert e2e["fp16"]["64x64"][task]["image_psnr_db"] >= 45.0
        for key in ("w8a16", "qnn:sm8650", "qnn:sm8750"):
            assert e2e[key]["64x64"][task]["image_psnr_db"] >= 25.0, (key, task, e2e[key])
        for key in ("qnn:sm8650/fp16", "qnn:sm8750/fp16"):  # the fp32 graphs, run by the HTP in fp16
            assert e2e[key]["64x64"][task]["image_psnr_db"] >= 45.0, (key, task, e2e[key])
    # Different HTP architectures compile different binaries.
    files = bundle.manifest.files
    unet = {
        t: next(c for c in bundle.target(t).contexts if c.component == "unet") for t in ("sm8650", "sm8750")
    }
    assert files[unet["sm8650"].binaries[0]].sha256 != files[unet["sm8750"].binaries[0]].sha256
