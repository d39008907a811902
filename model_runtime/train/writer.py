"""Writing a trained nano model as an official DreamLite folder (plus its ``dreamlite.json``).

The layout is what ``DreamLiteMobilePipeline.save_pretrained`` writes (see the conformance fixture):
``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``processor/`` and
``scheduler/``; weights as safetensors in ``float16`` by default (the loaders upcast on load), configs as
JSON. The folder is then served by the ordinary loader and pipeline, unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from model_runtime.train import configs, tokenizer_build
from model_runtime.train.configs import NanoSizes


def _dump(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _half_copy(module: Any, dtype: torch.dtype) -> Any:
    import copy

    clone = copy.deepcopy(module)
    return clone.to(dtype)


def write_folder(
    out: Path,
    *,
    sizes: NanoSizes,
    tokenizer: Any,
    text_encoder: Any,
    unet: Any,
    vae: Any,
    variant: str = "mobile",
    steps: int = 4,
    guidance: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float16,
    model_id: str = "dreamlite-nano",
    drop: dict[str, int] | None = None,
) -> Path:
    """Write a complete model folder.

    Args:
        out: Destination (replaced if it exists).
        sizes: The nano sizes.
        tokenizer: The trained ``tokenizers.Tokenizer``.
        text_encoder: ``Qwen3VLForConditionalGeneration``.
        unet: ``DreamLiteUNetModel``.
        vae: ``AutoencoderTiny``.
        variant: ``mobile`` (the 4-step student) or ``base`` (the guided teacher).
        steps: Default steps recorded in ``dreamlite.json``.
        guidance: (text, image) guidance scales for ``base``.
        dtype: Storage dtype of the weights.
        drop: Template tokens dropped per task (``dreamlite.json``'s ``drop_idx``; None: the template
            prefix, :func:`tokenizer_build.drop_indices`).
        model_id: Name in ``dreamlite.json``.

    Returns:
        ``out``.
    """
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model_index = configs.model_index()
    if variant == "base":
        model_index["_class_name"] = "DreamLitePipeline"
    _dump(tmp / "model_index.json", model_index)
    _dump(tmp / "scheduler" / "scheduler_config.json", configs.scheduler_config())
    _half_copy(unet, dtype).save_pretrained(tmp / "unet", safe_serialization=True)
    _half_copy(vae, dtype).save_pretrained(tmp / "vae", safe_serialization=True)
    te = _half_copy(text_encoder, dtype)
    te.config.dtype = str(dtype).removeprefix("torch.")
    te.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    tokenizer_build.save_tokenizer(tokenizer, tmp / "tokenizer")
    tokenizer_build.save_tokenizer(tokenizer, tmp / "processor", processor=True)
    _dump(tmp / "processor" / "preprocessor_config.json", configs.processor_config(sizes))
    _dump(tmp / "processor" / "video_preprocessor_config.json", configs.video_processor_config())
    drop = drop if drop is not None else tokenizer_build.drop_indices(tokenizer)
    _dump(
        tmp / "dreamlite.json",
        configs.folder_config(
            sizes, drop, variant=variant, steps=steps, guidance=guidance, model_id=model_id
        ),
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def folder_bytes(folder: Path) -> int:
    """Total size of the files of a folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
