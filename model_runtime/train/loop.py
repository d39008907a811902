"""The training loop shared by every stage: seeded steps, checkpoints, resume, progress bar and loss log.

A stage is an object with ``step(i) -> {"loss": …}`` (one optimisation step whose data depend only on the
stage seed and ``i``), ``state_dict()`` and ``load_state_dict()``. :func:`run_stage` drives it for
``total`` steps, writes ``<run_dir>/<name>/ckpt.pt`` atomically every ``ckpt_every_s`` seconds and at the
end, and resumes from that file when asked, so an interrupted run continues at the same step with the
same data.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


class Stage(Protocol):
    """One training stage."""

    def step(self, i: int) -> dict[str, float]:
        """Run optimisation step ``i`` (0-based) and return its losses."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (models, optimiser, EMA)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


@dataclass
class StageLog:
    """Loss curve and timing of one stage.

    Attributes:
        name: Stage name.
        total_steps: Planned steps.
        steps: Logged step numbers (1-based, every ``log_every`` steps: the mean over those steps).
        losses: Mean loss per logged window, per loss name.
        seconds: Wall time spent in this stage (summed over resumed runs).
    """

    name: str
    total_steps: int
    steps: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor·peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def run_stage(
    stage: Stage,
    name: str,
    total: int,
    run_dir: Path,
    *,
    resume: bool = True,
    ckpt_every_s: float = 120.0,
    log_every: int = 10,
    progress: bool = True,
) -> StageLog:
    """Run (or finish) a stage with checkpoints.

    Args:
        stage: The stage.
        name: Stage name (checkpoint folder and log key).
        total: Number of optimisation steps.
        run_dir: Run folder.
        resume: Continue from ``<run_dir>/<name>/ckpt.pt`` if it exists.
        ckpt_every_s: Seconds between checkpoints.
        log_every: Steps per logged loss point.
        progress: Show a tqdm progress bar.

    Returns:
        The stage's loss log (also saved in the checkpoint).
    """
    from tqdm import tqdm

    ckpt = run_dir / name / "ckpt.pt"
    log = StageLog(name=name, total_steps=total)
    start = 0
    if resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        stage.load_state_dict(saved["stage"])
        start = int(saved["step"])
        log = StageLog(**saved["log"])
    if start >= total:
        return log
    t_start = time.perf_counter()
    seconds0 = log.seconds
    last_ckpt = t_start
    window: dict[str, list[float]] = {}
    bar = tqdm(
        total=total,
        initial=start,
        desc=name,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=5,
    )
    for i in range(start, total):
        losses = stage.step(i)
        for key, value in losses.items():
            window.setdefault(key, []).append(float(value))
        if (i + 1) % log_every == 0 or i + 1 == total:
            log.steps.append(i + 1)
            for key, values in window.items():
                log.losses.setdefault(key, []).append(sum(values) / len(values))
            bar.set_postfix({k: f"{v[-1]:.4f}" for k, v in log.losses.items()}, refresh=False)
            window = {}
        bar.update(1)
        now = time.perf_counter()
        if now - last_ckpt >= ckpt_every_s or i + 1 == total:
            log.seconds = seconds0 + now - t_start
            _save_atomic({"step": i + 1, "stage": stage.state_dict(), "log": log.to_json()}, ckpt)
            last_ckpt = now
    bar.close()
    return log


def write_logs(logs: dict[str, StageLog], path: Path) -> None:
    """Write the loss logs of all stages as one small JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {name: log.to_json() for name, log in logs.items()}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
