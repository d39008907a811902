"""Pick the teacher's guidance on the TRAINING split: ShapesEval of a run's joint-stage EMA per guidance.

The teacher (28 steps) and the distillation target use the guidance this sweep favours; it runs on training
prompts so the held-out numbers in the README stay untouched by the choice.

    python scripts/nano_guidance_sweep.py [--run runs/nano] [--prompts 32] \
        [--out docs/results/nano/guidance-sweep.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from model_runtime.train import shapes_eval, world
from model_runtime.train.diffusion import Example, sample
from model_runtime.train.recipe import Recipe

SETTINGS: tuple[tuple[int, tuple[float, float] | None], ...] = (
    (4, None),
    (28, None),
    (28, (1.5, 1.5)),
    (28, (2.5, 1.5)),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/nano"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/results/nano/guidance-sweep.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = Recipe(args.run, progress=False)
    models = recipe.models()
    recipe._load_stage_models(models, "joint", ema=True)
    n = args.prompts
    gen = shapes_eval.generate_items("train")[:: max(1, 144 // n)][:n]
    edits = shapes_eval.edit_items("train")[:: max(1, 144 // n)][:n]
    gen_ex = [Example("generate", g.prompt, None) for g in gen]
    edit_ex = [Example("edit", e.edit.instruction, None, world.render(e.edit.source)) for e in edits]
    rows = []
    for steps, guidance in SETTINGS:
        t0 = time.perf_counter()
        g_scores: list[dict[str, float]] = []
        e_scores: list[dict[str, float]] = []
        for k in range(0, n, 16):
            seeds = [1000 + i for i in range(len(gen_ex[k : k + 16]))]
            images = sample(models, gen_ex[k : k + 16], seeds, steps, guidance)
            g_scores += [
                shapes_eval.score_generate(it.scene, shapes_eval.analyse(im))
                for it, im in zip(gen[k : k + 16], images, strict=True)
            ]
            images = sample(models, edit_ex[k : k + 16], seeds, steps, guidance)
            e_scores += [
                shapes_eval.score_edit(it.edit, shapes_eval.analyse(im))
                for it, im in zip(edits[k : k + 16], images, strict=True)
            ]
        row = {
            "steps": steps,
            "guidance": guidance,
            "generate": {k: float(np.mean([s[k] for s in g_scores])) for k in g_scores[0]},
            "edit": {k: float(np.mean([s[k] for s in e_scores])) for k in e_scores[0]},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(
            f"steps {steps:2d} guidance {guidance}: generate {row['generate']['overall']:.3f} "
            f"edit {row['edit']['score']:.3f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"split": "train", "prompts": n, "seeds": [1000], "model": "joint-stage EMA of the run"}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
