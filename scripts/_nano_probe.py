"""Shared by the nano probes: the shipped dreamlite-nano components, a fixed held-out edit set, the report.

Imported by ``scripts/nano_*_probe.py`` (run as ``python scripts/<probe>.py``, so this folder is on the path).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Shipped:
    """The shipped folder's components in float32, and the runtime-exact text stage."""

    vae: Any
    text_encoder: Any
    unet: Any
    featurizer: Any


def load_shipped() -> Shipped:
    """The default model's VAE (frozen), text encoder, UNet and the recipe's text featurizer."""
    from diffusers import AutoencoderTiny, DreamLiteUNetModel
    from transformers import Qwen3VLForConditionalGeneration

    from model_runtime.assets import default_model_dir
    from model_runtime.train.recipe import Recipe, RecipeConfig

    folder = default_model_dir()
    vae = AutoencoderTiny.from_pretrained(str(folder / "vae")).float().eval().requires_grad_(False)
    text_encoder = Qwen3VLForConditionalGeneration.from_pretrained(str(folder / "text_encoder")).float()
    unet = DreamLiteUNetModel.from_pretrained(str(folder / "unet")).float()
    with tempfile.TemporaryDirectory() as tmp:
        featurizer = Recipe(Path(tmp), RecipeConfig(), progress=False).featurizer()
    return Shipped(vae, text_encoder, unet, featurizer)


def held_out_edits(per_kind: int) -> list[Any]:
    """The first ``per_kind`` held-out ShapesEval edits of every kind, kind by kind."""
    from model_runtime.train import shapes_eval

    edits = [it.edit for it in shapes_eval.edit_items("heldout")]
    return [e for k in shapes_eval.EDIT_KINDS for e in [e for e in edits if e.kind == k][:per_kind]]


def write_report(path: str | Path, results: dict[str, Any]) -> None:
    """Write a probe's results as indented JSON (creating the folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
