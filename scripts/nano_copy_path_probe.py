"""Probe: does self-attention at the middle UNet stage help the nano model copy an edit's source?

dreamlite-nano keeps DreamLite-mobile's block layout, where only the deepest stage (4×8 tokens for the
16×32 in-context latent of a 128² edit) has self-attention, so it is the only path by which the target half
can read the source half. The shipped model redraws untouched objects instead of copying them. This script
trains two UNets from scratch under identical conditions and compares them:

* ``mobile``: the shipped layout;
* ``attn2``: the same block types, with ``CrossAttnDownBlock2D``/``CrossAttnUpBlock2D`` (self-attention) at
  the middle stage too (8×16 tokens).

Both use the shipped VAE and the shipped text encoder (frozen), the joint stage's data (half edits) and
hyper-parameters, the same seeds and ``--steps`` steps. Reported per variant: the v-prediction MSE on a
fixed held-out batch at fixed noise levels (generate rows; edit rows on all cells, on cells of untouched
objects, on changed cells), and ShapesEval of Euler samples (no guidance) on held-out edits and prompts.
Short runs from scratch rank the variants; they do not predict the full recipe's scores.

    python scripts/nano_copy_path_probe.py [--steps 360] [--out docs/results/nano/copy-path-probe.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=360)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-kind", type=int, default=8, help="held-out edits per kind (and 6x prompts)")
    parser.add_argument("--sample-steps", type=int, default=12)
    parser.add_argument("--variants", default="mobile,attn2")
    parser.add_argument("--out", default="docs/results/nano/copy-path-probe.json")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from _nano_probe import held_out_edits, load_shipped, write_report

    from model_runtime.train import configs, diffusion, shapes_eval, world
    from model_runtime.train.configs import NanoSizes
    from model_runtime.train.diffusion import DiffusionConfig, DiffusionStage, Example, NanoModels
    from model_runtime.train.models import build_unet

    torch.set_num_threads(args.threads)
    parts = load_shipped()
    vae, text_encoder, featurizer = parts.vae, parts.text_encoder, parts.featurizer
    text_encoder.eval().requires_grad_(False)

    edits = held_out_edits(args.per_kind)
    prompts = list(shapes_eval.generate_items("heldout"))[: 6 * args.per_kind]
    held: list[Example] = [
        Example("edit", e.instruction, world.render(e.target), world.render(e.source)) for e in edits
    ] + [Example("generate", g.prompt, world.render(g.scene)) for g in prompts]
    n_edit = len(edits)

    # cells (latent 16×16) of untouched objects and of changed pixels, per edit row
    def cell_masks() -> tuple[torch.Tensor, torch.Tensor]:
        keep, changed = [], []
        for e, ex in zip(edits, held, strict=False):
            tgt, src = ex.target, ex.source
            assert tgt is not None
            assert src is not None
            bg = tgt[:1, :1].astype(np.int16)
            obj = np.abs(tgt.astype(np.int16) - bg).max(axis=2) > 8
            same = np.abs(tgt.astype(np.int16) - src.astype(np.int16)).max(axis=2) <= 8
            if e.kind == "background":  # every pixel of the background changed; objects are kept
                same = obj
            keep.append(obj & same)
            changed.append(~same)
        to_cells = lambda m: F.max_pool2d(torch.from_numpy(np.stack(m)).float()[:, None], 8)  # noqa: E731
        return to_cells(keep), to_cells(changed)  # (E, 1, 16, 16) each

    keep_cells, changed_cells = cell_masks()
    levels = (0.3, 0.6, 0.9)
    results: dict[str, Any] = {
        "steps": args.steps,
        "levels": list(levels),
        "held_out": {"edits": n_edit, "prompts": len(prompts)},
        "variants": {},
    }
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        unet = build_unet(NanoSizes(), seed=2, layout=variant)
        models = NanoModels(text_encoder, unet, vae, featurizer, configs.scheduler_config())
        cfg = DiffusionConfig(edit_share=0.5, warmup=30)
        stage = DiffusionStage(models, cfg, args.steps, seed=777)
        t0 = time.perf_counter()
        for i in range(args.steps):
            parts = stage.step(i)
            if (i + 1) % 40 == 0:
                print(f"{variant} step {i + 1}/{args.steps} loss {parts['loss']:.4f}", flush=True)
        seconds = time.perf_counter() - t0
        stage.ema_unet.copy_to(unet.parameters())  # the text encoder stays the shipped one
        unet.eval()

        with torch.no_grad():
            c = diffusion.conditions(models, held, guided=False)
            x0 = diffusion.encode_images(vae, [ex.target for ex in held])  # type: ignore[misc]
            mse: dict[str, list[float]] = {
                "generate": [],
                "edit": [],
                "edit_untouched": [],
                "edit_changed": [],
            }
            gen = torch.Generator().manual_seed(5)
            for level in levels:
                noise = torch.randn(x0.shape, generator=gen)
                t = torch.full((len(held),), level)
                x_t = (1 - level) * x0 + level * noise
                v = diffusion.unet_velocity(unet, x_t, c.cond, t, c.text, c.mask)
                err = ((v - (noise - x0)) ** 2).mean(dim=1, keepdim=True)  # (B, 1, 16, 16)
                mse["generate"].append(float(err[n_edit:].mean()))
                e = err[:n_edit]
                mse["edit"].append(float(e.mean()))
                mse["edit_untouched"].append(float((e * keep_cells).sum() / keep_cells.sum()))
                mse["edit_changed"].append(float((e * changed_cells).sum() / changed_cells.sum()))
        images = np.concatenate(
            [
                diffusion.sample(
                    models, held[i : i + 16], [1000] * len(held[i : i + 16]), args.sample_steps, None
                )
                for i in range(0, len(held), 16)
            ]
        )
        per_kind: dict[str, dict[str, list[float]]] = {}
        for e, img in zip(edits, images[:n_edit], strict=True):
            s = shapes_eval.score_edit(e, shapes_eval.analyse(img))
            d = per_kind.setdefault(e.kind, {"score": [], "instruction": [], "preserve": []})
            for key in d:
                d[key].append(s[key])
        gen_scores = [
            shapes_eval.score_generate(g.scene, shapes_eval.analyse(img))["overall"]
            for g, img in zip(prompts, images[n_edit:], strict=True)
        ]
        row = {
            "train_seconds": round(seconds, 1),
            "params": sum(p.numel() for p in unet.parameters()),
            "mse": {k: [round(v, 4) for v in vals] for k, vals in mse.items()},
            "mse_mean": {k: round(float(np.mean(vals)), 4) for k, vals in mse.items()},
            "edit": {k: {p: round(float(np.mean(v)), 3) for p, v in d.items()} for k, d in per_kind.items()},
            "edit_overall": {
                p: round(float(np.mean([np.mean(d[p]) for d in per_kind.values()])), 3)
                for p in ("score", "instruction", "preserve")
            },
            "generate_overall": round(float(np.mean(gen_scores)), 3),
        }
        results["variants"][variant] = row
        print(
            variant,
            json.dumps(
                {k: row[k] for k in ("train_seconds", "mse_mean", "edit_overall", "generate_overall")}
            ),
        )
    write_report(args.out, results)


if __name__ == "__main__":
    main()
