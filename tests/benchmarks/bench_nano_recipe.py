"""Will ``python -m model_runtime.train`` fit its 90-minute budget on *this* machine? Per-stage step timing.

The recipe's stages run at different speeds on different CPUs (the stages of the weights shipped before the
current ones were priced 1.9x apart: 126.6 estimated minutes on a Zen 5, 237.5 on an AVX2-only Zen 3), so this
script measures instead of guessing: for every stage it builds the
real stage object at the real sizes (untrained weights: the time of a step does not depend on them), runs
``--warmup`` steps, times ``--steps`` more and extrapolates to the recipe's step counts. The diffusion and
distillation stages cache VAE latents per stage; their steps are timed twice, with a warm cache and with a
cold one (every image encoded), which prices one encode inside a step, and the encodes are added for the
expected number of distinct pool items the stage draws (``pool·(1 − (1 − 1/pool)^draws)`` per task; an edit
encodes its source and its target). Checked against a real 60-step ``t2i`` run on a 2-core AMD EPYC: estimate
125 s with a separately timed encode, 146 s measured (see docs/nano.md for the current check). The recorded
durations of the shipped run (``docs/results/nano/train_log.json``) are printed beside the estimate, so the
ratio between the two machines is explicit. Every stage that encodes text is timed twice, side by side,
with the plain text path and with ``fast_text`` (the shipped recipe's setting: the batch's shared template
prefix encoded once, the patch embedding as a product), and both totals are printed. Not collected
by pytest.

    python tests/benchmarks/bench_nano_recipe.py [--steps 4] [--threads 2] [--recipe RUN/recipe.json] \
        [--out bench-results/nano_recipe.json]

``--recipe`` prices another recipe than the default one (a run's ``recipe.json``); stages with 0 steps are
left out.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from _machine import cpu_info
from _nano import bench_args, time_interleaved, time_steps, untrained_run, write_report

SHIPPED_LOG = Path(__file__).resolve().parents[2] / "docs" / "results" / "nano" / "train_log.json"


def _distinct(pool: int | None, draws: float) -> float:
    """Expected distinct items among ``draws`` uniform draws from ``pool`` (every draw when no pool)."""
    if pool is None:
        return draws
    return pool * (1.0 - (1.0 - 1.0 / pool) ** draws)


def _encodes(pool: int | None, steps: int, batch: int, edit_share: float) -> float:
    """Expected VAE encodes of a stage with a fresh latent cache."""
    draws = steps * batch
    return _distinct(pool, draws * (1 - edit_share)) + 2 * _distinct(pool, draws * edit_share)


def _recipe_path() -> str | None:
    """``--recipe PATH`` taken out of ``sys.argv`` (the shared parser does not know it), or None."""
    if "--recipe" not in sys.argv:
        return None
    at = sys.argv.index("--recipe")
    path = sys.argv[at + 1]
    del sys.argv[at : at + 2]
    return path


def main() -> None:
    recipe_path = _recipe_path()
    args = bench_args(
        __doc__, 4, 2, "bench-results/nano_recipe.json", "untimed steps per stage (fill the cache)"
    )

    import torch

    from model_runtime.train.align import AlignStage
    from model_runtime.train.caption_teacher import CaptionTeacherStage
    from model_runtime.train.diffusion import DiffusionStage
    from model_runtime.train.distill import DistillStage, frozen_copy
    from model_runtime.train.recipe import STAGES, RecipeConfig
    from model_runtime.train.scene import SceneStage
    from model_runtime.train.text_pretrain import TextPretrainStage

    torch.set_num_threads(args.threads)
    cfg = RecipeConfig.from_json(json.loads(Path(recipe_path).read_text())) if recipe_path else RecipeConfig()
    tiny_pool = 4  # the timed steps hit a warm cache; the encodes are added below
    per_step: dict[str, dict[str, float]] = {}  # stage -> text path ("plain", "fast") -> s/step
    encode_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe, vae = untrained_run(Path(tmp), cfg)
        vae_stage = cfg.vae_stage(vae)
        vae_s = time_steps(vae_stage, args.warmup, args.steps)
        per_step["vae"] = {"plain": vae_s, "fast": vae_s}  # no text
        models = recipe.models()
        fz = models.featurizer  # every stage below encodes through it

        def both(stage: Any, start: int = 0) -> dict[str, float]:
            """Seconds a step of ``stage`` with the plain and the fast text path, interleaved."""
            paths = {"plain": lambda: setattr(fz, "fast", False), "fast": lambda: setattr(fz, "fast", True)}
            seconds = time_interleaved(stage, args.warmup, args.steps, paths, start)
            fz.fast = False
            return seconds

        for name in ("text", "read"):
            text_cfg = getattr(cfg, name)
            total = getattr(cfg, f"{name}_steps")
            if total == 0:
                continue
            stage = TextPretrainStage(recipe.text_encoder(), fz, text_cfg, total, seed=1)
            first = min(text_cfg.captions_first, total)  # caption-only steps, then captions and edits
            none = {"plain": 0.0, "fast": 0.0}
            mixed = both(stage, start=first) if first < total else none
            captions = both(stage) if first > 0 else none
            per_step[name] = {k: (captions[k] * first + mixed[k] * (total - first)) / total for k in none}

        per_encode: list[float] = []
        for name in ("t2i", "edit", "joint"):
            dcfg = getattr(cfg, name)
            total = getattr(cfg, f"{name}_steps")
            if total == 0:
                continue
            warm = DiffusionStage(models, replace(dcfg, pool=tiny_pool), total, 1)
            per_step[name] = both(warm)
            cold = DiffusionStage(models, replace(dcfg, pool=None), total, 1)  # every image is new
            cold_step = time_steps(cold, 1, args.steps)
            warm_step = per_step[name]["plain"]
            per_encode.append(max(cold_step - warm_step, 0.0) / (dcfg.batch * (1 + dcfg.edit_share)))
            encode_s[name] = _encodes(dcfg.pool, total, dcfg.batch, dcfg.edit_share) * per_encode[-1]
        per_image = statistics.mean(per_encode)
        dist = DistillStage(
            models, frozen_copy(models.unet), replace(cfg.distill, pool=tiny_pool), cfg.distill_steps, 1
        )
        per_step["distill"] = both(dist)
        d = cfg.distill
        encode_s["distill"] = _encodes(d.pool, cfg.distill_steps, d.batch, d.edit_share) * per_image
        if cfg.align_steps > 0:  # last: it freezes the UNet the other stages share
            a = cfg.align
            align = AlignStage(models, replace(a, pool=tiny_pool), cfg.align_steps, 1)
            per_step["align"] = both(align)
            draws = cfg.align_steps * a.batch  # one encode per target (no condition latent)
            encodes = _distinct(a.pool, draws * (1 - a.caption_share)) + _distinct(
                a.pool, draws * a.caption_share
            )
            encode_s["align"] = encodes * per_image
        if cfg.scene_steps > 0:  # the encoder only; the UNet's ``encoder_hid_proj`` is only read
            scene = SceneStage(models.text_encoder, models.unet, fz, cfg.scene, cfg.scene_steps, 1)
            per_step["scene"] = both(scene)
        if cfg.caption_teacher_steps > 0:  # the UNet, on-policy on the student's own steps
            ct = CaptionTeacherStage(models, cfg.caption_teacher, cfg.caption_teacher_steps, 1)
            per_step["caption_teacher"] = both(ct)
        if cfg.teacher_caption_steps > 0:  # the teacher's UNet at forward-noised rows
            tc = CaptionTeacherStage(models, cfg.teacher_caption, cfg.teacher_caption_steps, 1)
            per_step["teacher_caption"] = both(tc)

    shipped = json.loads(SHIPPED_LOG.read_text()) if SHIPPED_LOG.is_file() else {}
    rows = []
    for name in sorted(per_step, key=STAGES.index):
        sec = per_step[name]
        steps = getattr(cfg, f"{name}_steps")
        est = {k: (v * steps + encode_s.get(name, 0.0)) / 60 for k, v in sec.items()}
        ref = shipped.get(name, {}).get("seconds")
        rows.append(
            {
                "stage": name,
                "steps": steps,
                "seconds_per_step": round(sec["plain"], 3),
                "seconds_per_step_fast_text": round(sec["fast"], 3),
                "encode_seconds": round(encode_s.get(name, 0.0), 1),
                "estimated_minutes": round(est["plain"], 1),
                "estimated_minutes_fast_text": round(est["fast"], 1),
                "shipped_run_minutes": None if ref is None else round(ref / 60, 1),
            }
        )
    total = sum(r["estimated_minutes"] for r in rows)
    total_fast = sum(r["estimated_minutes_fast_text"] for r in rows)
    shipped_total = sum(r["shipped_run_minutes"] or 0.0 for r in rows)
    own_total = total_fast if cfg.fast_text else total  # the text path this recipe trains with
    result = {
        **cpu_info(),
        "vae_precision": vae_stage.precision,
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
        "vae_encode_ms_per_image": round(per_image * 1000, 2),
        "stages": rows,
        "estimated_total_minutes": round(total, 1),
        "estimated_total_minutes_fast_text": round(total_fast, 1),
        "fast_text_vs_plain": round(total_fast / total, 2),
        "shipped_run_total_minutes": round(shipped_total, 1),
        "recipe_text_path": "fast" if cfg.fast_text else "plain",
        "ratio_vs_shipped_run": round(own_total / shipped_total, 2) if shipped_total else None,
        "fits_90_minutes": total <= 90.0,
        "fits_90_minutes_fast_text": total_fast <= 90.0,
    }
    generation = f", {result['cpu_generation']}" if result["cpu_generation"] else ""
    cpu = f"{result['cpu']} ({result['cpu_capability']}{generation})"
    print(f"{cpu}, {args.threads} threads, VAE {result['vae_precision']}")
    head = f"{'stage':<16} {'steps':>6} {'s/step':>7} {'fast':>7} {'encode s':>9} {'est. min':>9} {'fast':>6}"
    print(f"{head} {'shipped min':>12}")
    for r in rows:
        print(
            f"{r['stage']:<16} {r['steps']:>6} {r['seconds_per_step']:>7.3f} "
            f"{r['seconds_per_step_fast_text']:>7.3f} {r['encode_seconds']:>9.1f} "
            f"{r['estimated_minutes']:>9.1f} {r['estimated_minutes_fast_text']:>6.1f} "
            f"{r['shipped_run_minutes'] or 0:>12.1f}"
        )
    print(
        f"total: estimated {total:.1f} min here "
        f"(fast_text: {total_fast:.1f}, ×{result['fast_text_vs_plain']}) "
        f"vs {shipped_total:.1f} min recorded for the shipped run "
        f"(×{result['ratio_vs_shipped_run']}, {result['recipe_text_path']} text path); "
        f"fits 90 min: {result['fits_90_minutes']} (fast_text: {result['fits_90_minutes_fast_text']})"
    )
    write_report(args.out, result)


if __name__ == "__main__":
    main()
