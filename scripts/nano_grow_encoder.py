"""Does a deeper text encoder learn the ``scene`` stage from fewer edits? A probe's folder maker.

Copies a nano model folder and appends ``--layers N`` decoder layers to its text encoder. Each new layer
starts as the identity: its attention output projection and its MLP down projection are zero, so the residual
stream, and with it every feature the UNet sees, is unchanged (``--check`` asserts this on a caption and an
edit request). The rest of the layer is drawn from N(0, 0.02) with a fixed seed. Training the ``scene`` stage
on the copy then shows whether the extra depth buys sample efficiency (``docs/nano.md``, "A target readout at
the closing rows"). Measured: 6 layers instead of 4 made a ``scene`` step 1.21x dearer and the error curve
about 10 % lower at step 1500, so the recipe does not use it.

    python scripts/nano_grow_encoder.py --src runs/g0/student --out runs/g2/student --layers 2 --check
    cp runs/g0/recipe.json runs/g2/
    python -m model_runtime.train --run-dir runs/g2 --stage scene --out none
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch


def grow(src: Path, out: Path, layers: int, seed: int = 0) -> int:
    """Write ``src`` to ``out`` with ``layers`` identity decoder layers appended; returns the new depth."""
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextDecoderLayer

    shutil.copytree(src, out)
    model = Qwen3VLForConditionalGeneration.from_pretrained(src / "text_encoder", dtype=torch.float32)
    lm = model.model.language_model
    old = int(lm.config.num_hidden_layers)
    lm.config.num_hidden_layers = old + layers
    model.config.text_config.num_hidden_layers = old + layers
    gen = torch.Generator().manual_seed(seed)
    for k in range(layers):
        layer = Qwen3VLTextDecoderLayer(lm.config, old + k)
        with torch.no_grad():
            for p in layer.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.02, generator=gen)
            layer.self_attn.o_proj.weight.zero_()  # the identity: no attention output ...
            layer.mlp.down_proj.weight.zero_()  # ... and no MLP output into the residual stream
        lm.layers.append(layer)
    model.save_pretrained(out / "text_encoder")
    return old + layers


def check(src: Path, out: Path) -> float:
    """Largest difference between the two folders' features of a caption and of an edit request."""
    from model_runtime.train.diffusion import NanoModels
    from model_runtime.train.text_features import TextRequest

    a, b = NanoModels.from_folder(src), NanoModels.from_folder(out)
    image = np.full((128, 128, 3), 255, np.uint8)
    worst = 0.0
    for req in (
        TextRequest("generate", "a large red circle on the left on a white background"),
        TextRequest("edit", "make the red circle blue", image),
    ):
        with torch.no_grad():
            fa, _ = a.featurizer(a.text_encoder, [req])  # (1, L, D) f32
            fb, _ = b.featurizer(b.text_encoder, [req])  # (1, L, D) f32
        worst = max(worst, float((fa - fb).abs().max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="a nano model folder")
    ap.add_argument("--out", type=Path, required=True, help="the new folder (must not exist)")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers to append")
    ap.add_argument("--check", action="store_true", help="assert that the features are unchanged")
    args = ap.parse_args()
    depth = grow(args.src, args.out, args.layers)
    print(f"text encoder: {depth - args.layers} -> {depth} decoder layers, written to {args.out}")
    if args.check:
        worst = check(args.src, args.out)
        print(f"largest feature difference: {worst:.3g}")
        if worst > 1e-5:
            raise SystemExit("the grown encoder does not give the same features")


if __name__ == "__main__":
    main()
