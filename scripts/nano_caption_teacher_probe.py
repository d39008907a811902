"""Distil the student's own caption path into its edit path (on-policy; a probe of the UNet's side).

From the target scene's caption the shipped 4-step student makes an edit's target far better (0.87–0.89 as
an edit, ``nano_edit_mode_probe.py``'s ``caption`` arm) than from the edit request (0.32). This probe trains
the student's UNet so that, for an edit request (its features from a folder's text encoder, frozen, and the
source latent in the condition half), it predicts the velocity a frozen copy of itself predicts from the
target's caption with a zero condition (the generate path). Rows work on-policy as ``distill`` does: the
student walks j of its own 4 steps on the edit request from seeded noise, and is regressed there. A quarter
of the rows are generate rows whose target is the frozen copy on the same caption (generation kept).

    python scripts/nano_caption_teacher_probe.py --model runs/scene-d --out runs/ct-a --steps 300
    dreamlite eval shapes --model runs/ct-a --out F
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _nano_probe import log_step, optimizer_step, repo_path, write_like

from model_runtime.assets import default_model_dir
from model_runtime.train import world
from model_runtime.train.diffusion import (
    LATENT,
    Conditions,
    Example,
    NanoModels,
    condition_latents,
    encode_texts,
    object_weights,
    schedule_sigmas,
    unet_velocity,
)
from model_runtime.train.distill import frozen_copy, student_states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="start folder (its encoder makes the features)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--object-weight", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or default_model_dir()
    models = NanoModels.from_folder(folder)
    models.text_encoder.eval().requires_grad_(False)
    unet = models.unet.train().requires_grad_(True)
    teacher = frozen_copy(unet).eval()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sig = schedule_sigmas(models, 4)  # (5,)
    n_gen = args.batch // 4
    log = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        rng = np.random.default_rng([600, i])
        edits = [world.train_edit(rng) for _ in range(args.batch - n_gen)]
        scenes = [e.target for e in edits] + [world.train_scene(rng) for _ in range(n_gen)]
        # rows: the edit requests, then their targets' captions (teacher), then generate rows
        sources = [world.render(e.source) for e in edits]
        targets = [world.render(s) for s in scenes]
        req = [Example("edit", e.instruction, None, src) for e, src in zip(edits, sources, strict=True)]
        req += [Example("generate", s.caption(), None) for s in scenes[len(edits) :]]
        cap = [Example("generate", s.caption(), None) for s in scenes]
        with torch.no_grad():
            text, mask = encode_texts(models, req, [False] * len(req))  # (B, L, D)
            ctext, cmask = encode_texts(models, cap, [False] * len(cap))  # (B, Lc, D)
            c = Conditions(
                is_edit=torch.tensor([r.task == "edit" for r in req]),
                text=text,
                mask=mask,
                cond=condition_latents(models, req),
            )
            noise = torch.randn((len(req), 4, LATENT, LATENT), generator=torch.Generator().manual_seed(i))
            j = torch.from_numpy(rng.integers(0, 4, len(req)))  # (B,) student steps taken
            x = student_states(unet, sig, noise, c, j)  # (B, 4, h, w)
            s = sig[j]  # (B,)
            want = unet_velocity(teacher, x, torch.zeros_like(c.cond), s, ctext, cmask)  # (B, 4, h, w)
        unet.train()
        v = unet_velocity(unet, x, c.cond, s, c.text, c.mask)  # (B, 4, h, w)
        w = object_weights(
            [Example("edit", "", t, r.source) for t, r in zip(targets, req, strict=True)],
            args.object_weight,
        )  # (B, 1, h, w)
        per_row = (w * (v - want) ** 2).mean(dim=(1, 2, 3))  # (B,)
        loss = per_row.mean()
        optimizer_step(opt, unet.parameters(), loss, i, args.steps, args.lr)
        log_step(
            log,
            i,
            args.steps,
            t0,
            edit=float(per_row[: len(edits)].mean()),
            generate=float(per_row[len(edits) :].mean()),
        )
    write_like(folder, args.out, models.text_encoder, unet.eval(), models.vae)
    report = {"config": {**vars(args), "model": repo_path(folder), "out": repo_path(args.out)}, "log": log}
    (args.out / "caption_teacher_probe.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
