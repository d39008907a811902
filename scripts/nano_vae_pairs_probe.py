"""Fit the nano VAE (the recipe's ``vae`` stage alone); follow every colour × background pair as it trains.

Prints, every ``--every`` steps, the worst pairs and the median of ``vae_fit.pair_errors`` (mean absolute
error in 0–255 levels on object pixels), and writes them as JSON. ``--act relu --hard-share 0 --leak 0`` is
the recipe before the VAE's blind spot was found, ``--leak 0`` the previous shipped run's (docs/nano.md,
"The VAE's blind spot"); the defaults are the recipe now.

    python scripts/nano_vae_pairs_probe.py [--act silu|relu] [--hard-share 0.5] [--leak 0.1] [--threads 2] \\
        [--seed 0 --data-seed 10] [--out bench-results/vae-pairs.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from model_runtime.train import vae_fit
from model_runtime.train.recipe import RecipeConfig


def main() -> None:
    cfg = RecipeConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--act", default=cfg.sizes.vae_act_fn, choices=["silu", "relu"])
    parser.add_argument("--hard-share", type=float, default=cfg.vae_hard_share)
    parser.add_argument("--leak", type=float, default=cfg.vae_leak, help="initial slope of the leaky fuse")
    parser.add_argument("--steps", type=int, default=cfg.vae_steps)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=cfg.seed, help="initialisation seed (the recipe's)")
    parser.add_argument("--data-seed", type=int, default=cfg.seed + 10, help="data seed (the recipe's)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/vae-pairs.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    run = replace(cfg, vae_steps=args.steps, vae_hard_share=args.hard_share, vae_leak=args.leak)
    vae = vae_fit.build_vae(replace(cfg.sizes, vae_act_fn=args.act), seed=args.seed)
    stage = run.vae_stage(vae, seed=args.data_seed)
    rows = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        stage.step(i)
        if (i + 1) % args.every == 0 or i + 1 == args.steps:
            errors = vae_fit.pair_errors(vae)
            worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
            row = {
                "step": i + 1,
                "seconds": round(time.perf_counter() - t0, 1),
                "worst": [[f"{c}/{b}", e] for (c, b), e in worst],
                "median": statistics.median(errors.values()),
                "hard": [f"{c}/{b}" for c, b in vae_fit.hard_pairs(errors)],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "precision": stage.precision,
        "checks": stage.hard_log,
        "progress": rows,
        "final": {f"{c}/{b}": e for (c, b), e in vae_fit.pair_errors(vae).items()},
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
