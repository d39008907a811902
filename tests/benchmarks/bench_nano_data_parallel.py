"""Would two 1-thread workers, each on half a batch, beat one 2-thread process? An upper bound, measured.

The recipe runs one process with 2 intra-op threads; the nano model's matrices are small (hidden 128 in the
encoder, 32–128 channels in the UNet), so two threads do not halve a step. This script times the real
``scene``, ``read`` and ``joint`` steps at the real sizes (untrained weights, ``fast_text`` on, as
``bench_nano_recipe.py``) two ways in one run: one worker with 2 threads on the stage's batch, then two
workers at once, 1 thread each, on half the batch. The ratio of the slower half-batch worker to the full
batch is what data parallelism could give at most: gradient exchange and the wait for the slower worker are
not in it, and nothing in the recipe does this yet. Not collected by pytest.

    python tests/benchmarks/bench_nano_data_parallel.py [--steps 8] [--warmup 2] \
        [--out bench-results/nano_data_parallel.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from _machine import cpu_info
from _nano import bench_args, time_steps, untrained_run, write_report

STAGES = ("scene", "read", "joint")


def worker(threads: int, div: int, steps: int, warmup: int) -> dict[str, float]:
    """Seconds a step of each stage with ``threads`` threads on ``1/div`` of its batch."""
    import torch

    from model_runtime.train.diffusion import DiffusionStage
    from model_runtime.train.recipe import RecipeConfig
    from model_runtime.train.scene import SceneStage
    from model_runtime.train.text_pretrain import TextPretrainStage

    torch.set_num_threads(threads)
    cfg = RecipeConfig(fast_text=True)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe, _ = untrained_run(Path(tmp), cfg)
        for name in STAGES:
            m = recipe.models()
            stage: Any
            if name == "scene":
                sc = replace(cfg.scene, batch=cfg.scene.batch // div, captions=cfg.scene.captions // div)
                stage = SceneStage(m.text_encoder, m.unet, m.featurizer, sc, cfg.scene_steps, 1)
            elif name == "read":
                rc = replace(cfg.read, batch=cfg.read.batch // div)
                stage = TextPretrainStage(m.text_encoder, m.featurizer, rc, cfg.read_steps, 1)
            else:
                jc = replace(cfg.joint, pool=4, batch=cfg.joint.batch // div)
                stage = DiffusionStage(m, jc, cfg.joint_steps, 1)
            out[name] = time_steps(stage, warmup, steps)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":  # a child: threads, div, steps, warmup
        threads, div, steps, warmup = (int(a) for a in sys.argv[2:6])
        print(json.dumps(worker(threads, div, steps, warmup)))
        return
    args = bench_args(__doc__, 8, 2, "bench-results/nano_data_parallel.json", "untimed steps per stage")

    def spawn(threads: int, div: int) -> subprocess.Popen[str]:
        argv = [
            sys.executable,
            __file__,
            "--worker",
            str(threads),
            str(div),
            str(args.steps),
            str(args.warmup),
        ]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def result(proc: subprocess.Popen[str]) -> dict[str, float]:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"worker failed with exit status {proc.returncode}")
        parsed: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
        return parsed

    whole = result(spawn(2, 1))
    halves = [spawn(1, 2), spawn(1, 2)]  # at once: they share the two cores
    a, b = (result(p) for p in halves)
    rows = []
    for name in STAGES:
        slower = max(a[name], b[name])
        rows.append(
            {
                "stage": name,
                "one_worker_2_threads_s": round(whole[name], 3),
                "two_workers_1_thread_half_batch_s": [round(a[name], 3), round(b[name], 3)],
                "upper_bound_ratio": round(slower / whole[name], 2),
            }
        )
        print(
            f"{name:<6} one worker, 2 threads: {whole[name]:.3f} s/step; two workers, 1 thread, half batch: "
            f"{a[name]:.3f} / {b[name]:.3f} s/step; at best ×{slower / whole[name]:.2f}"
        )
    write_report(
        args.out,
        {
            **cpu_info(),
            "fast_text": True,
            "steps": args.steps,
            "load_average": os.getloadavg()[0],
            "stages": rows,
        },
    )


if __name__ == "__main__":
    main()
