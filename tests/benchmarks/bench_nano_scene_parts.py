"""Where does a ``scene`` step's time go? The recipe's most expensive stage, split into its parts.

``scene`` trains only the text encoder, on 32 edit requests and 16 anchor captions a step, against targets a
frozen copy of the starting encoder computes (the target scenes' captions, the source scenes' captions for the
changed row's weight, the anchor captions). This script builds the stage at the real sizes (untrained weights,
as ``bench_nano_recipe.py``; a step costs the same), runs it with ``fast_text`` (or ``--plain``) and times,
inside the real ``SceneStage.step``, every text-encoder call (live or reference, task, batch), the backward
pass and the optimiser; the rest of the step (drawing and rendering the data, building the target rows, the
losses) is what is left. It answers how much a cheaper target or a smaller anchor could save at most. Not
collected by pytest.

    python tests/benchmarks/bench_nano_scene_parts.py [--steps 12] [--warmup 3] [--plain] \
        [--out bench-results/nano_scene_parts.json]
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import cpu_info
from _nano import bench_args, untrained_run, write_report


def main() -> None:
    plain = "--plain" in sys.argv
    if plain:
        sys.argv.remove("--plain")
    args = bench_args(__doc__, 12, 3, "bench-results/nano_scene_parts.json", "untimed steps first")

    import torch

    from model_runtime.train.recipe import RecipeConfig
    from model_runtime.train.scene import SceneStage
    from model_runtime.train.text_features import TextFeaturizer

    torch.set_num_threads(args.threads)
    cfg = RecipeConfig()
    seconds: dict[str, float] = collections.defaultdict(float)
    with tempfile.TemporaryDirectory() as tmp:
        recipe, _ = untrained_run(Path(tmp), cfg)
        models = recipe.models()
        models.featurizer.fast = not plain
        stage = SceneStage(models.text_encoder, models.unet, models.featurizer, cfg.scene, cfg.scene_steps, 1)

        encode = TextFeaturizer.encode_task
        backward = torch.Tensor.backward
        opt_step = stage.opt.step

        def timed_encode(self: TextFeaturizer, model: Any, requests: Any, device: Any = None) -> Any:
            t0 = time.perf_counter()
            out = encode(self, model, requests, device)
            who = "reference" if model is stage.reference else "live"
            seconds[f"{who} encoder forward, {requests[0].task} x{len(requests)}"] += time.perf_counter() - t0
            return out

        def timed_backward(self: torch.Tensor, *a: Any, **k: Any) -> None:
            t0 = time.perf_counter()
            backward(self, *a, **k)
            seconds["backward"] += time.perf_counter() - t0

        def timed_opt_step(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            out = opt_step(*a, **k)
            seconds["optimiser"] += time.perf_counter() - t0
            return out

        TextFeaturizer.encode_task = timed_encode  # type: ignore[method-assign]
        torch.Tensor.backward = timed_backward  # type: ignore[method-assign]
        stage.opt.step = timed_opt_step  # type: ignore[method-assign]
        try:
            for i in range(args.warmup):
                stage.step(i)
            seconds.clear()
            t0 = time.perf_counter()
            for i in range(args.warmup, args.warmup + args.steps):
                stage.step(i)
            total = (time.perf_counter() - t0) / args.steps
        finally:
            TextFeaturizer.encode_task = encode  # type: ignore[method-assign]
            torch.Tensor.backward = backward  # type: ignore[method-assign]

    parts = {name: s / args.steps for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])}
    parts["rest (data, target rows, losses)"] = total - sum(parts.values())
    result = {
        **cpu_info(),
        "threads": args.threads,
        "text_path": "plain" if plain else "fast_text",
        "load_average": os.getloadavg()[0],
        "timed_steps": args.steps,
        "seconds_per_step": round(total, 4),
        "parts": [
            {"part": k, "seconds": round(v, 4), "share": round(v / total, 3)} for k, v in parts.items()
        ],
    }
    generation = f", {result['cpu_generation']}" if result["cpu_generation"] else ""
    cpu = f"{result['cpu']} ({result['cpu_capability']}{generation})"
    print(f"{cpu}, {args.threads} threads, {result['text_path']}")
    print(f"scene step: {total:.3f} s")
    for row in result["parts"]:
        print(f"  {row['part']:<48} {row['seconds']:>7.4f} s  {row['share']:>6.1%}")
    write_report(args.out, result)


if __name__ == "__main__":
    main()
