"""Does reward fine-tuning (the recipe's ``refl`` stage) move the shipped student's edits? A probe.

Starts from a model folder (default: the embedded dreamlite-nano), runs ``--steps`` steps of
:class:`model_runtime.train.refl.ReflStage` on training-split requests, applies the EMA and writes the
result as a model folder (float16, as shipped), which ``dreamlite eval shapes --model DIR`` then scores on
the held-out split. The loss per logged step goes to ``DIR/refl_log.json``.

    python scripts/nano_refl_probe.py --out runs/refl-probe [--steps 200] [--text-lr 0] [--edit-share 0.5]
    dreamlite eval shapes --model runs/refl-probe --out docs/results/nano/refl-probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _nano_probe import repo_path, write_like

from model_runtime.assets import default_model_dir
from model_runtime.train.diffusion import NanoModels
from model_runtime.train.refl import ReflConfig, ReflStage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="start folder (default: the embedded model)")
    ap.add_argument("--out", type=Path, required=True, help="the fine-tuned model folder")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--text-lr", type=float, default=0.0)
    ap.add_argument("--edit-share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or default_model_dir()
    models = NanoModels.from_folder(folder)
    cfg = ReflConfig(batch=args.batch, lr=args.lr, text_lr=args.text_lr, edit_share=args.edit_share)
    stage = ReflStage(models, cfg, args.steps, args.seed)
    log = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        row = stage.step(i)
        if i % 10 == 0 or i == args.steps - 1:
            row = {"step": i, "seconds": round(time.perf_counter() - t0, 1), **row}
            log.append(row)
            print(json.dumps(row), flush=True)
    stage.apply_ema()
    write_like(folder, args.out, models.text_encoder, models.unet, models.vae)
    report = {
        "start": repo_path(folder),
        "config": {**vars(args), "model": repo_path(folder), "out": repo_path(args.out)},
        "refl": cfg.__repr__(),
        "seconds": round(time.perf_counter() - t0, 1),
        "log": log,
    }
    (args.out / "refl_log.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
