"""The recipe's ``caption_teacher`` stage on any model folder (the probe it started as; a UNet-side probe).

Runs :class:`model_runtime.train.caption_teacher.CaptionTeacherStage` on ``--model`` (default: the embedded
model) outside a run folder and writes the result as a model folder, so a start other than a run's
``scene/student`` can be tried. The stage's docstring says what it trains. Until commit d9e0d88 this script
held its own copy of the loop (the same data seed, 600, and steps; its noise came from the step number, the
stage's from the data seed); the probe results in ``docs/nano.md`` were made with that copy.

    python scripts/nano_caption_teacher_probe.py --model runs/scene-d --out runs/ct-a --steps 300
    dreamlite eval shapes --model runs/ct-a --out F
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _nano_probe import log_step, repo_path, write_like

from model_runtime.assets import default_model_dir
from model_runtime.train.caption_teacher import CaptionTeacherConfig, CaptionTeacherStage
from model_runtime.train.diffusion import NanoModels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="start folder (its encoder makes the features)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--object-weight", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=600, help="data seed (the recipe's: its seed + 600)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or default_model_dir()
    models = NanoModels.from_folder(folder)
    cfg = CaptionTeacherConfig(batch=args.batch, lr=args.lr, object_weight=args.object_weight)
    stage = CaptionTeacherStage(models, cfg, args.steps, args.seed)
    log: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        log_step(log, i, args.steps, t0, **stage.step(i))
    write_like(folder, args.out, models.text_encoder, models.unet.eval(), models.vae)
    report = {"config": {**vars(args), "model": repo_path(folder), "out": repo_path(args.out)}, "log": log}
    (args.out / "caption_teacher_probe.json").write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
