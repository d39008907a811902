"""Shared by the nano recipe benchmarks: a run folder of untrained models at the real sizes, and step timing.

The time of a training step does not depend on the weights, so the benchmarks build the real stage objects on
untrained models instead of training the recipe first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def time_steps(stage: Any, warmup: int, steps: int, start: int = 0) -> float:
    """Median seconds of ``stage.step(i)`` over ``steps`` steps after ``warmup``, from step ``start``."""
    return time_interleaved(stage, warmup, steps, {"": lambda: None}, start)[""]


def time_interleaved(
    stage: Any, warmup: int, steps: int, setups: dict[str, Callable[[], None]], start: int = 0
) -> dict[str, float]:
    """Median seconds of ``stage.step(i)`` per variant, each step index run once per variant in turn.

    ``setups`` maps a variant's name to what switches the stage to it (called before each of its steps), so
    every variant sees the same batches and the same machine load.
    """
    times: dict[str, list[float]] = {name: [] for name in setups}
    for i in range(start, start + warmup + steps):
        for name, setup in setups.items():
            setup()
            t0 = time.perf_counter()
            stage.step(i)
            if i >= start + warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def untrained_run(run_dir: Path, cfg: Any) -> tuple[Any, Any]:
    """A recipe on ``run_dir`` with its tokenizer built and an untrained VAE saved as the ``vae`` stage's.

    Returns:
        The :class:`~model_runtime.train.recipe.Recipe` (its ``models()`` load the VAE) and the VAE module.
    """
    import torch

    from model_runtime.train import vae_fit
    from model_runtime.train.recipe import Recipe

    recipe = Recipe(run_dir, cfg, progress=False)
    recipe.run_tokenizer()
    vae = vae_fit.build_vae(cfg.sizes, seed=cfg.seed)
    (run_dir / "vae").mkdir()
    torch.save({"stage": {"vae": vae.state_dict()}}, run_dir / "vae" / "ckpt.pt")
    return recipe, vae


def bench_args(doc: str, steps: int, warmup: int, out: str, warmup_help: str) -> Any:
    """The nano benchmarks' command line (threads, timed and untimed steps, JSON path), parsed."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=warmup, help=warmup_help)
    parser.add_argument("--out", default=out)
    return parser.parse_args()


def write_report(out: str, result: dict[str, Any]) -> None:
    """Write a benchmark's result as indented JSON to ``out`` (folders created) and say where."""
    import json

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")
