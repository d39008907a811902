"""Stage ④ loading: folder validation names the missing or bad file; dreamlite.json overrides constants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_runtime.errors import ModelLoadError
from model_runtime.folder import hash_tree, open_model_folder
from tests.conftest import TINY_MODEL


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(TINY_MODEL, dst)
    for path in dst.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def test_opens_the_official_layout() -> None:
    folder = open_model_folder(TINY_MODEL)
    assert folder.variant == "mobile"
    assert folder.config.drop_idx_generate == 34
    assert folder.config.drop_idx_edit == 64
    assert folder.config.edit_working_size == (1024, 1024)
    assert folder.config.vlm_image_size == (256, 256)
    assert folder.image_token_id == 1212


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("model_index.json", "model_index.json"),
        ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"),
        ("vae/config.json", "vae/config.json"),
        ("text_encoder/model.safetensors", "text_encoder/model.safetensors"),
        ("tokenizer/tokenizer.json", "tokenizer/tokenizer.json"),
        ("processor/preprocessor_config.json", "processor/preprocessor_config.json"),
        ("scheduler", "scheduler"),
    ],
)
def test_missing_file_is_named(model_copy: Path, remove: str, named: str) -> None:
    target = model_copy / remove
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(ModelLoadError) as info:
        open_model_folder(model_copy)
    assert named in str(info.value)


def test_bad_json_and_wrong_class_are_named(model_copy: Path) -> None:
    (model_copy / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"unet/config.json: not readable JSON"):
        open_model_folder(model_copy)
    (model_copy / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ModelLoadError, match=r"unet/config.json: `_class_name` must be"):
        open_model_folder(model_copy)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_model_folder(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="is not a folder"):
        open_model_folder(tmp_path / "file")


def test_folder_config_overrides(model_copy: Path) -> None:
    doc = {
        "model_id": "x",
        "drop_idx": {"generate": 5, "edit": 9},
        "default_size": [128, 96],
        "default_steps": 8,
    }
    (model_copy / "dreamlite.json").write_text(json.dumps(doc))
    cfg = open_model_folder(model_copy).config
    assert (cfg.model_id, cfg.drop_idx_generate, cfg.drop_idx_edit) == ("x", 5, 9)
    assert (cfg.default_size, cfg.default_steps) == ((128, 96), 8)
    (model_copy / "dreamlite.json").write_text(json.dumps({"drop_idxx": 3}))
    with pytest.raises(ModelLoadError, match="unknown keys"):
        open_model_folder(model_copy)


def test_base_variant_from_model_index(model_copy: Path) -> None:
    index = json.loads((model_copy / "model_index.json").read_text())
    index["_class_name"] = "DreamLitePipeline"
    (model_copy / "model_index.json").write_text(json.dumps(index))
    cfg = open_model_folder(model_copy).config
    assert (cfg.variant, cfg.default_steps, cfg.vlm_image_size) == ("base", 28, (512, 512))
    assert (cfg.guidance_scale, cfg.image_guidance_scale) == (3.5, 1.0)


def test_weights_hash_changes_with_any_byte(model_copy: Path) -> None:
    before = hash_tree(model_copy)
    assert open_model_folder(model_copy).weights_sha256() == before
    with (model_copy / "vae" / "diffusion_pytorch_model.safetensors").open("r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    assert hash_tree(model_copy) != before


def test_corrupt_weights_fail_with_the_file_named(model_copy: Path) -> None:
    from model_runtime.backends.torch_backend import load_torch_backend

    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError, match="unet"):
        load_torch_backend(model_copy)
