"""Bundle manifest: hex tables, content addressing, and refusal of tampered bundles (synthetic bundles)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_runtime.bundle import (
    BUNDLE_FORMAT,
    MANIFEST_NAME,
    f32_from_hex,
    f32_hex,
    f64_from_hex,
    f64_hex,
    open_bundle,
    write_manifest,
)
from model_runtime.errors import ModelLoadError


def test_float32_hex_round_trip_is_exact() -> None:
    values = np.asarray([1.0, 0.9045312, 1e-30, -0.0, 3.4e38], dtype=np.float32)
    words = f32_hex(values)
    assert words[0] == "3f800000"
    back = f32_from_hex(words)
    assert back.dtype == np.float32
    assert back.view(np.uint32).tolist() == values.view(np.uint32).tolist()
    assert f64_from_hex(f64_hex(1.1392019)) == 1.1392019


def _minimal_manifest() -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT,
        "model": {"model_id": "m"},
        "pipeline": {
            "model_id": "m",
            "variant": "mobile",
            "drop_idx": {"generate": 34, "edit": 64},
            "default_size": [64, 64],
            "edit_working_size": [64, 64],
            "vlm_image_size": [256, 256],
            "default_steps": 4,
            "size_multiple": 32,
            "min_size": 64,
            "max_size": 2048,
            "guidance_scale": 0.0,
            "image_guidance_scale": 0.0,
            "latent_channels": 4,
            "vae_scale": 8,
            "text_dim": 64,
            "image_token_id": 5,
            "vae_scaling_factor": 1.0,
            "vae_shift_factor": 0.0,
        },
        "text": {
            "seq_len": 8,
            "padding": "right",
            "tokenizer": "tokenizer/tokenizer.json",
            "tokenizer_sha256": "0",
            "processor_config": "processor/preprocessor_config.json",
            "encoder": {"runtime": "host"},
        },
        "noise": {"spec": "dln1"},
        "scheduler_config": {},
        "schedules": [
            {
                "width": 64,
                "height": 64,
                "steps": 2,
                "mu_f64": f64_hex(0.5),
                "sigmas_f32": f32_hex([1.0, 0.5, 0.0]),
                "timesteps_f32": f32_hex([1000.0, 500.0]),
            }
        ],
        "graphs": [],
        "runtime": {},
        "reference_session": {},
    }


@pytest.fixture
def synthetic_bundle(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "bundle"
    (root / "graphs").mkdir(parents=True)
    (root / "graphs" / "a.onnx").write_bytes(b"graph bytes")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    bundle_id = write_manifest(root, _minimal_manifest())
    return root, bundle_id


def test_bundle_id_is_the_manifest_hash_and_files_are_listed(synthetic_bundle: tuple[Path, str]) -> None:
    root, bundle_id = synthetic_bundle
    raw = (root / MANIFEST_NAME).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == bundle_id
    data = json.loads(raw)
    assert data["files"]["graphs/a.onnx"]["sha256"] == hashlib.sha256(b"graph bytes").hexdigest()
    bundle = open_bundle(root, expected_id=bundle_id)
    assert bundle.bundle_id == bundle_id
    table = bundle.schedule(64, 64, 2)
    assert table.sigmas.tolist() == [1.0, 0.5, 0.0]
    assert table.mu == 0.5


def test_modified_file_is_refused_by_name(synthetic_bundle: tuple[Path, str]) -> None:
    root, _ = synthetic_bundle
    (root / "graphs" / "a.onnx").write_bytes(b"graph bytez")  # same size, different bytes
    with pytest.raises(ModelLoadError, match=r"graphs/a\.onnx: sha256 mismatch"):
        open_bundle(root)


def test_missing_extra_and_resized_files_are_refused(synthetic_bundle: tuple[Path, str]) -> None:
    root, _ = synthetic_bundle
    (root / "graphs" / "b.onnx").write_bytes(b"unexpected")
    with pytest.raises(ModelLoadError, match=r"graphs/b\.onnx: is not listed"):
        open_bundle(root)
    (root / "graphs" / "b.onnx").unlink()
    (root / "graphs" / "a.onnx").write_bytes(b"longer graph bytes")
    with pytest.raises(ModelLoadError, match=r"graphs/a\.onnx: sha256 mismatch"):
        open_bundle(root)
    (root / "graphs" / "a.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"graphs/a\.onnx: missing"):
        open_bundle(root)


def test_edited_manifest_changes_the_id_and_a_pinned_id_refuses_it(
    synthetic_bundle: tuple[Path, str],
) -> None:
    root, bundle_id = synthetic_bundle
    path = root / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["text"]["seq_len"] = 9
    path.write_text(json.dumps(data))
    assert open_bundle(root).bundle_id != bundle_id
    with pytest.raises(ModelLoadError, match=r"manifest\.json: sha256 mismatch: bundle id"):
        open_bundle(root, expected_id=bundle_id)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing manifest"):
        open_bundle(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{}")
    with pytest.raises(ModelLoadError, match="not a valid bundle manifest"):
        open_bundle(tmp_path)


def test_bundle_backends_and_export_cli_import_without_frameworks() -> None:
    import subprocess
    import sys

    code = (
        "import sys, model_runtime.bundle, model_runtime.backends.onnx_backend, "
        "model_runtime.backends.qnn_backend, model_runtime.export.cli;"
        "heavy = ('torch', 'diffusers', 'transformers', 'onnxruntime', 'onnx');"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import pulled in: {out.stdout.strip()}"
