"""Reward fine-tuning of the 4-step student (the paper's ReFL stage), with the world's own reward.

DreamLite post-trains with reward feedback learning (ReFL: HPSv3 for generation, EditReward for editing),
which back-propagates a reward of the model's *own* sample into the network. In the shapes world the ideal
reward needs no learned model: every request (a caption, or a source + instruction) names exactly one scene,
and a scene has exactly one render (:mod:`.world`: no jitter), so the reward of a sample is minus its
object-weighted distance, in latent space, to the latent of the requested scene's render.

Each row works **on-policy**, as :mod:`.distill` does: from seeded noise the student takes ``j`` of its own
4 steps (no gradient) to reach x at s_j, the state it meets when served; from there its single velocity
gives the clean-latent estimate x̂0 = x − s_j·v (for j = 3 that is the served output), and the loss is the
weighted squared distance of x̂0 to the target latent. Every student step is in every batch. Unlike the
distillation targets, these do not inherit the teacher's errors, and unlike the pretraining loss they are
taken at the states the served sampler visits, so what the student drifts into (an edit that redraws the
source, say) is what gets corrected. The text encoder may learn too (``text_lr``); training rows are from
the training split only, as everywhere in the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model_runtime.train.diffusion import (
    LATENT,
    Conditions,
    LatentCache,
    NanoModels,
    condition_latents,
    draw_examples,
    encode_texts,
    object_weights,
    schedule_sigmas,
    unet_velocity,
)
from model_runtime.train.distill import student_states
from model_runtime.train.loop import cosine_lr
from model_runtime.train.models import Ema


@dataclass(frozen=True, slots=True)
class ReflConfig:
    """Hyper-parameters of the reward fine-tuning stage."""

    batch: int = 16
    lr: float = 2e-4
    text_lr: float = 0.0
    warmup: int = 10
    edit_share: float = 0.5
    student_steps: int = 4
    object_weight: float = 4.0
    ema_decay: float = 0.99
    pool: int | None = 8000


class ReflStage:
    """On-policy reward fine-tuning of the student (a :class:`~.loop.Stage`).

    Args:
        models: Components; ``models.unet`` is the 4-step student.
        cfg: Hyper-parameters.
        total: Planned steps.
        seed: Data seed.
    """

    def __init__(self, models: NanoModels, cfg: ReflConfig, total: int, seed: int) -> None:
        self.m = models
        self.cfg = cfg
        self.total = total
        self.seed = seed
        self.sig = schedule_sigmas(models, cfg.student_steps)  # (steps + 1,)
        groups = [{"params": list(models.unet.parameters()), "lr": cfg.lr}]
        self.peaks = [cfg.lr]
        self.train_text = cfg.text_lr > 0.0
        models.text_encoder.requires_grad_(self.train_text)
        if self.train_text:
            groups.append({"params": list(models.text_encoder.parameters()), "lr": cfg.text_lr})
            self.peaks.append(cfg.text_lr)
        self.opt = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.99))
        self.ema_unet = Ema(models.unet.parameters(), cfg.ema_decay)
        self.ema_text = Ema(models.text_encoder.parameters(), cfg.ema_decay) if self.train_text else None
        self.cache = LatentCache(models.vae)

    def step(self, i: int) -> dict[str, float]:
        """One optimisation step."""
        cfg, m = self.cfg, self.m
        rng = np.random.default_rng([self.seed, i])
        examples = draw_examples(rng, cfg.batch, cfg.edit_share, cfg.pool, self.seed)
        B = len(examples)
        x0 = self.cache([e.target for e in examples], [e.target_key for e in examples])  # type: ignore[misc]
        cond = condition_latents(m, examples, self.cache)  # (B, 4, h, w)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn((B, 4, LATENT, LATENT), generator=gen)  # (B, 4, h, w)
        j = torch.arange(B) % cfg.student_steps  # (B,) every student step in every batch
        m.text_encoder.train(self.train_text)
        with torch.set_grad_enabled(self.train_text):
            text, mask = encode_texts(m, examples, [False] * B)  # (B, L, D), (B, L)
        is_edit = torch.tensor([e.task == "edit" for e in examples])  # (B,)
        c = Conditions(is_edit=is_edit, text=text.detach(), mask=mask, cond=cond)
        x = student_states(m.unet, self.sig, noise, c, j)  # (B, 4, h, w) on-policy states
        for group, peak in zip(self.opt.param_groups, self.peaks, strict=True):
            group["lr"] = cosine_lr(i, self.total, peak, cfg.warmup, floor=0.2)
        m.unet.train()
        sigma = self.sig[j]  # (B,)
        v = unet_velocity(m.unet, x, cond, sigma, text, mask)  # (B, 4, h, w)
        x0_hat = x - sigma[:, None, None, None] * v  # (B, 4, h, w) the step's clean estimate
        w = object_weights(examples, cfg.object_weight)  # (B, 1, h, w)
        per_row = ((x0_hat - x0) ** 2 * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3))  # (B,)
        loss = per_row.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        params = [p for g in self.opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.opt.step()
        self.ema_unet.update()
        if self.ema_text is not None:
            self.ema_text.update()
        out = {"loss": float(loss.detach())}
        if bool(is_edit.any()):
            out["edit"] = float(per_row[is_edit].mean())
        if bool((~is_edit).any()):
            out["generate"] = float(per_row[~is_edit].mean())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Student (and text encoder), optimiser and EMAs."""
        state: dict[str, Any] = {
            "unet": self.m.unet.state_dict(),
            "opt": self.opt.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
        }
        if self.ema_text is not None:
            state["text_encoder"] = self.m.text_encoder.state_dict()
            state["ema_text"] = self.ema_text.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.m.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
        self.ema_unet.load_state_dict(state["ema_unet"])
        if self.ema_text is not None:
            self.m.text_encoder.load_state_dict(state["text_encoder"])
            self.ema_text.load_state_dict(state["ema_text"])

    def apply_ema(self) -> None:
        """Replace the live weights by their EMA."""
        self.ema_unet.copy_to(self.m.unet.parameters())
        if self.ema_text is not None:
            self.ema_text.copy_to(self.m.text_encoder.parameters())
