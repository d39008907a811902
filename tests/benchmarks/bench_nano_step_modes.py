"""Can a nano recipe step be made cheaper without fewer steps? Eager fp32 against bf16 autocast and compile.

The recipe's time is its steps times the seconds of a step, and its diffusion stages spend a step on the
UNet's forward and backward at batch 32. This script times one step of the real ``t2i``, ``joint`` and
``scene`` stages at the real sizes (untrained weights; as ``bench_nano_recipe.py``) three ways, side by side
in one run: eager float32 (what the recipe does), the step's loss under ``torch.autocast("cpu",
torch.bfloat16)``, and the UNet's (or, for ``scene``, the encoder's) forward through ``torch.compile`` with
static shapes (a batch whose text is longer compiles anew). It prints the ratio of each mode to eager and
writes JSON; a mode that fails on a stage is reported with its error. Not collected by pytest.

    python tests/benchmarks/bench_nano_step_modes.py [--steps 6] [--threads 2] \
        [--out bench-results/nano_step_modes.json]
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from _machine import cpu_info
from _nano import bench_args, time_steps, untrained_run, write_report

MODES = ("eager", "bf16_autocast", "compile")


def _autocast(inner: Any) -> Any:
    """``inner`` run under bf16 autocast, its tensor result(s) returned in float32."""
    import torch

    def run(*a: Any, **kw: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = inner(*a, **kw)
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()

    return run


def main() -> None:
    args = bench_args(
        __doc__, 6, 3, "bench-results/nano_step_modes.json", "untimed steps (compilation happens here)"
    )

    import torch

    from model_runtime.train.diffusion import DiffusionStage
    from model_runtime.train.recipe import RecipeConfig
    from model_runtime.train.scene import SceneStage

    torch.set_num_threads(args.threads)
    cfg = RecipeConfig()
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe, _ = untrained_run(Path(tmp), cfg)
        for name in ("t2i", "joint", "scene"):
            seconds: dict[str, float] = {}
            for mode in MODES:
                models = recipe.models()  # fresh modules: a compiled forward does not leak into the next mode
                stage: Any
                if name == "scene":
                    stage = SceneStage(
                        models.text_encoder, models.unet, recipe.featurizer(), cfg.scene, cfg.scene_steps, 1
                    )
                    net = models.text_encoder
                    losses = ("edit_error", "caption_drift")
                else:
                    stage = DiffusionStage(models, replace(getattr(cfg, name), pool=4), 1000, 1)
                    net = models.unet
                    losses = ("loss",)
                if mode == "bf16_autocast":  # the losses' forward passes in bf16, backward as autograd does
                    for loss_name in losses:
                        setattr(stage, loss_name, _autocast(getattr(stage, loss_name)))
                elif mode == "compile":  # static shapes: a new text length compiles anew (to the cache limit)
                    net.forward = torch.compile(net.forward, dynamic=False)  # type: ignore[method-assign]
                try:
                    seconds[mode] = time_steps(stage, args.warmup, args.steps)
                except Exception as e:  # a mode that cannot run this stage is a result, not a crash
                    failed[f"{name}/{mode}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            base = seconds["eager"]
            row: dict[str, Any] = {
                "stage": name,
                **{f"{m}_s_per_step": round(s, 3) for m, s in seconds.items()},
                **{f"{m}_vs_eager": round(s / base, 2) for m, s in seconds.items() if m != "eager"},
            }
            rows.append(row)
            ratios = ", ".join(
                f"{m} ×{row[f'{m}_vs_eager']}" if m in seconds else f"{m} failed" for m in MODES[1:]
            )
            print(f"{name:<6} eager {base:.3f} s/step; {ratios}")
    result = {
        **cpu_info(),
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
        "stages": rows,
        "failed": failed,
    }
    for key, err in failed.items():
        print(f"{key}: {err}")
    write_report(args.out, result)


if __name__ == "__main__":
    main()
