"""What the ``align`` stage buys before any edit training: the T2I UNet drawing held-out edits from the VLM.

The UNet of a run's ``t2i`` stage (zero condition latent, as it was trained) samples each held-out ShapesEval
edit from three kinds of text features, and ShapesEval scores the images as edits:

* ``caption``: the target scene's caption (what an editor that reads perfectly would say; the ceiling);
* ``read``: the edit request (source image + instruction) through the encoder the ``read`` stage left;
* ``align``: the same request through the encoder the ``align`` stage left (if the run has it).

    python scripts/nano_align_probe.py --run runs/nano5 [--steps 28] [--out align-probe.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _nano_probe import record_arm, score_edits, write_report
from numpy.typing import NDArray

from model_runtime.train import shapes_eval, world
from model_runtime.train.diffusion import LATENT, schedule_sigmas, unet_velocity
from model_runtime.train.recipe import Recipe
from model_runtime.train.text_features import TextRequest


@torch.no_grad()
def draw(models: Any, requests: list[TextRequest], seeds: list[int], steps: int) -> NDArray[np.uint8]:
    """Unguided Euler sampling with a zero condition latent; ``(B, 128, 128, 3)`` uint8."""
    models.unet.eval()
    models.text_encoder.eval()
    text, mask = models.featurizer.encode_mixed(models.text_encoder, requests)  # (B, L, D), (B, L)
    sig = schedule_sigmas(models, steps)
    x = torch.cat(
        [torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )  # (B, 4, h, w)
    zeros = torch.zeros_like(x)
    for k in range(steps):
        v = unet_velocity(models.unet, x, zeros, sig[k].expand(x.shape[0]), text, mask)
        x = x + (sig[k + 1] - sig[k]) * v
    y = models.vae.decode(x).sample  # (B, 3, H, W)
    y = ((y / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.asarray(y.permute(0, 2, 3, 1).numpy(), dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = Recipe(args.run, progress=False)
    models = recipe.models()
    models.unet.load_state_dict(recipe._stage_state("t2i")["unet"])
    items = shapes_eval.edit_items("heldout")
    seeds = [1000 + k for k in range(len(items))]
    arms: dict[str, tuple[str, bool]] = {"caption": ("read", True), "read": ("read", False)}
    if (args.run / "align" / "ckpt.pt").is_file():
        arms["align"] = ("align", False)
    report: dict[str, Any] = {"run": str(args.run), "steps": args.steps, "items": len(items), "arms": {}}
    for arm, (stage, as_caption) in arms.items():
        t0 = time.perf_counter()
        models.text_encoder.load_state_dict(recipe._stage_state(stage)["text_encoder"])
        requests = [
            TextRequest("generate", it.edit.target.caption(list(range(len(it.edit.target.objects)))))
            if as_caption
            else TextRequest("edit", it.edit.instruction, world.render(it.edit.source))
            for it in items
        ]
        scores: list[dict[str, float]] = []
        for k in range(0, len(items), args.batch):
            images = draw(models, requests[k : k + args.batch], seeds[k : k + args.batch], args.steps)
            scores += score_edits([it.edit for it in items[k : k + args.batch]], images)
        record_arm(report, arm, [it.edit.kind for it in items], scores, time.perf_counter() - t0)
    if args.out is not None:
        write_report(args.out, report)


if __name__ == "__main__":
    main()
