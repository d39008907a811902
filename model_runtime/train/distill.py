"""Step distillation: a guided 28-step teacher into an unguided 4-step student on the inference sigmas.

The student runs exactly the schedule the pipeline serves: the scheduler's dynamic-shift sigmas for 4 steps
at 128² (s_0 = 1 > s_1 > s_2 > s_3 > s_4 = 0). The teacher's 28-step schedule at the same size contains
them (input sigmas k/28 and j/4 share the points 1, 3/4, 1/2, 1/4 before the same monotone shift), so
student step j spans exactly teacher steps 7j … 7j + 6.

Each training row picks a student step j and works **on-policy**: starting from seeded noise, the student
itself takes j steps (no gradient) to reach x at s_j — the states it will meet when served. From there
the guided teacher (the base pipeline's text guidance for generate; text + image guidance for edits)
takes its 7 Euler steps to s_{j+1}. The student's single unguided velocity at (x, s_j) is regressed onto
the velocity that lands on the teacher's point: ``(x_teacher − x) / (s_{j+1} − s_j)``. Guidance is thereby
baked into the student, as DreamLite-mobile runs without it. The text encoder is frozen (shared by
teacher and student).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model_runtime.train.diffusion import (
    LATENT,
    Conditions,
    LatentCache,
    NanoModels,
    conditions,
    draw_examples,
    guided_velocity,
    schedule_sigmas,
)
from model_runtime.train.loop import cosine_lr
from model_runtime.train.models import Ema


@dataclass(frozen=True, slots=True)
class DistillConfig:
    """Hyper-parameters of the distillation stage."""

    batch: int = 16
    lr: float = 2e-4
    warmup: int = 10
    edit_share: float = 0.5
    guidance: tuple[float, float] = (1.5, 1.5)
    teacher_steps: int = 28
    student_steps: int = 4
    ema_decay: float = 0.99
    pool: int | None = 8000


def _subset(c: Conditions, idx: torch.Tensor) -> Conditions:
    return Conditions(
        is_edit=c.is_edit[idx],
        text=c.text[idx],
        mask=c.mask[idx],
        cond=c.cond[idx],
        text_u=None if c.text_u is None else c.text_u[idx],
        mask_u=None if c.mask_u is None else c.mask_u[idx],
    )


@torch.no_grad()
def student_states(
    unet: Any, sigmas: torch.Tensor, noise: torch.Tensor, c: Conditions, j: torch.Tensor
) -> torch.Tensor:
    """The states the student meets when served.

    Row b takes ``j[b]`` of its own unguided Euler steps on ``sigmas`` from ``noise`` (the UNet is put in
    eval mode). ``(B, 4, h, w)``.
    """
    student = unet.eval()
    x = noise.clone()  # (B, 4, h, w)
    for k in range(int(j.max())):
        rows = torch.nonzero(j > k).flatten()
        sigma = sigmas[k].expand(rows.numel())
        v = guided_velocity(student, x[rows], sigma, _subset(c, rows), None)
        x[rows] = x[rows] + (sigmas[k + 1] - sigmas[k]) * v
    return x


class DistillStage:
    """Trajectory distillation of the guided teacher into the 4-step student.

    Args:
        models: Components; ``models.unet`` is the student (initialised from the teacher).
        teacher: A frozen copy of the teacher UNet.
        cfg: Hyper-parameters.
        total: Planned steps.
        seed: Data seed.
    """

    def __init__(self, models: NanoModels, teacher: Any, cfg: DistillConfig, total: int, seed: int) -> None:
        self.m = models
        self.teacher = teacher.eval().requires_grad_(False)
        self.cfg = cfg
        self.total = total
        self.seed = seed
        models.text_encoder.eval().requires_grad_(False)
        self.s_sig = schedule_sigmas(models, cfg.student_steps)  # (5,)
        self.t_sig = schedule_sigmas(models, cfg.teacher_steps)  # (29,)
        self.ratio = cfg.teacher_steps // cfg.student_steps
        if cfg.teacher_steps % cfg.student_steps or not torch.allclose(
            self.t_sig[:: self.ratio], self.s_sig, atol=1e-5
        ):
            raise ValueError("the student's sigmas must be a subset of the teacher's")
        self.opt = torch.optim.AdamW(models.unet.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.ema = Ema(models.unet.parameters(), cfg.ema_decay)
        self.cache = LatentCache(models.vae)

    @torch.no_grad()
    def _targets(
        self, c: Conditions, noise: torch.Tensor, j: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """States x at s_j reached by the student, and the teacher's velocity targets from there."""
        s, t = self.s_sig, self.t_sig
        x = student_states(self.m.unet, s, noise, c, j)  # (B, 4, h, w)
        xt = x.clone()
        for sub in range(self.ratio):
            kt = j * self.ratio + sub  # (B,) teacher step index per row
            v = guided_velocity(self.teacher, xt, t[kt], c, self.cfg.guidance)
            xt = xt + (t[kt + 1] - t[kt])[:, None, None, None] * v
        ds = (s[j + 1] - s[j])[:, None, None, None]
        return x, (xt - x) / ds

    def step(self, i: int) -> dict[str, float]:
        """One optimisation step."""
        rng = np.random.default_rng([self.seed, i])
        examples = draw_examples(rng, self.cfg.batch, self.cfg.edit_share, self.cfg.pool, self.seed)
        c = conditions(self.m, examples, guided=True, cache=self.cache)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        B = len(examples)
        noise = torch.randn((B, 4, LATENT, LATENT), generator=gen)  # (B, 4, h, w)
        j = torch.arange(B) % self.cfg.student_steps  # (B,) every student step in every batch
        x, target = self._targets(c, noise, j)
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(i, self.total, self.cfg.lr, self.cfg.warmup, floor=0.2)
        self.m.unet.train()
        v = guided_velocity(self.m.unet, x, self.s_sig[j], c, None)  # (B, 4, h, w)
        loss = F.mse_loss(v, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.m.unet.parameters(), 1.0)
        self.opt.step()
        self.ema.update()
        return {"loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        """Student, optimiser and EMA."""
        return {"unet": self.m.unet.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.m.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
        self.ema.load_state_dict(state["ema"])

    def apply_ema(self) -> None:
        """Replace the student's weights by their EMA."""
        self.ema.copy_to(self.m.unet.parameters())


def frozen_copy(module: Any) -> Any:
    """A frozen deep copy (the teacher)."""
    return copy.deepcopy(module).eval().requires_grad_(False)
