"""The recipe's ``caption_teacher`` stage: the student's edit path learns to draw what its caption path draws.

After ``scene`` the text encoder says the whole edited scene at an edit request's closing rows, in the
student's caption language, but the 4-step student still draws an edit's target far better from the
target's caption (0.87–0.89 as an edit, ``docs/nano.md``) than from the edit request (0.67): the UNet's
edit path reads those rows next to the in-context source latent, and it was never taught to trust them.

This stage trains only the UNet. Its teacher is a frozen copy of the stage's starting student, run on the
*generate* path: the target scene's caption and a zero condition latent. For an edit triple (source,
instruction, target) the student, on the edit path (the request's features from the frozen encoder and the
source latent in the condition half), is regressed onto that teacher's velocity. Rows work on-policy as
``distill`` does: the student walks ``j`` of its own 4 steps on the edit request from seeded noise, and is
regressed at the state it reached, so it learns on the states it meets when served. Cells within one latent
cell of an object (the target's or the source's) weigh ``object_weight``. A share of the rows are generate
rows whose teacher is the frozen copy on the same caption: generation is anchored where it was.

Measured (held-out ShapesEval, ``docs/nano.md``): 300 steps on the ``scene`` student take held-out edits
from 0.671 to 0.851 (bf16 0.856; every kind ≥ 0.76) and keep generation (0.966); the shipped weights. The
probe it started as (``scripts/nano_caption_teacher_probe.py`` at commit d9e0d88) measured 0.856 / 0.969.

The recipe's ``teacher_caption`` stage runs the same stage on the guided 28-step teacher with
``states="forward"``: rows sit at forward-noised target latents (the flow-matching training points,
logit-normal t) instead of the student's 4-step trajectory, which would cost the teacher's guided steps to
walk. With equal text and image guidance g the base pipeline's guided edit velocity is
``g·v_edit + (1 − g)·v∅_edit`` (the image-only branch cancels) and its guided generate velocity
``g·v_caption + (1 − g)·v∅``, where the unconditional branches are the empty templates with a zero condition
latent (the edit's still shows the VLM the source). So the stage regresses both branches of the edit: the
request onto the caption, and, for ``uncond_share`` of the edit rows, the edit's empty template onto the
generate one; the guided edit then learns the guided generation of the target's caption exactly. The same
share of the generate rows anchor ``v∅`` itself. Measured on the recipe's teacher (``docs/nano.md``, two noise
seeds): 900 steps take its held-out edits from 0.334 to 0.835 and keep generation at 0.948 with count 0.826
(each seed ≥ 0.80); 600 steps edited at 0.814 and counted at 0.785, below target; 300 steps (one seed) edited
at 0.773 and counted at 0.785. Writing a UNet between the starting and the trained one (``keep`` 0.75, after
600 steps) scored worse than either on generation (count 0.764, against 0.847 and 0.785) and edited at 0.748,
so the recipe keeps the whole change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model_runtime.train import world
from model_runtime.train.diffusion import (
    LATENT,
    Conditions,
    Example,
    NanoModels,
    condition_latents,
    encode_images,
    encode_texts,
    noisy_latents,
    object_weights,
    schedule_sigmas,
    unet_velocity,
)
from model_runtime.train.distill import frozen_copy, student_states
from model_runtime.train.loop import cosine_lr

STATES = ("student", "forward")
"""Where the stage's rows sit (``CaptionTeacherConfig.states``)."""


@dataclass(frozen=True, slots=True)
class CaptionTeacherConfig:
    """Hyper-parameters of the ``caption_teacher`` stage.

    Attributes:
        batch: Rows per step (edit rows and generate rows).
        generate_share: Share of the rows that are generate rows (the anchor of generation).
        lr: Peak learning rate of the UNet.
        warmup: Warm-up steps.
        object_weight: Loss weight of latent cells within one cell of an object (1 elsewhere).
        student_steps: The student's sampling steps (the schedule it walks on-policy).
        states: Where rows are regressed: ``student`` (on-policy, ``student_steps`` of the model's own
            unguided Euler steps on the edit request from seeded noise: the shipped student's stage) or
            ``forward`` (the target latent noised at a logit-normal, resolution-shifted t: the guided
            teacher's stage, see the module docstring).
        uncond_share: Share of the edit rows and of the generate rows asked with their task's unconditional
            template and a zero condition latent (the guided sampler's ∅ branch); their teacher is the frozen
            copy's velocity from the *generate* unconditional template, so the edit's ∅ branch learns the
            generate one and the generate rows keep it where it was.
        logit_mean: Mean of the logit-normal t of ``forward`` rows (the pretraining stages').
        logit_std: Its standard deviation.
        keep: Share of the stage's change the written UNet keeps: its weights are ``start + keep·(trained −
            start)`` (a weight-space interpolation between the starting and the trained UNet, see
            :func:`merge_weights`); 1 writes the trained UNet.
    """

    batch: int = 16
    generate_share: float = 0.25
    lr: float = 2e-4
    warmup: int = 10
    object_weight: float = 4.0
    student_steps: int = 4
    states: str = "student"
    uncond_share: float = 0.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    keep: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.generate_share < 1.0:
            raise ValueError(f"generate_share: expected a value in [0, 1), got {self.generate_share!r}")
        if not 0.0 <= self.uncond_share <= 1.0:
            raise ValueError(f"uncond_share: expected a value in [0, 1], got {self.uncond_share!r}")
        if self.batch < 1:
            raise ValueError(f"batch: expected at least 1 row, got {self.batch!r}")
        if not 0.0 <= self.keep <= 1.0:
            raise ValueError(f"keep: expected a value in [0, 1], got {self.keep!r}")
        if self.states not in STATES:
            raise ValueError(f"states: expected one of {', '.join(STATES)}, got {self.states!r}")


def merge_weights(
    start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], keep: float
) -> dict[str, torch.Tensor]:
    """``start + keep·(trained − start)`` for every floating tensor (``torch.lerp``); others from ``trained``.

    Args:
        start: A state dict (the UNet a stage started from).
        trained: The same keys after training.
        keep: Share of the change kept, in [0, 1].

    Raises:
        ValueError: The two state dicts hold different keys or shapes.
    """
    if start.keys() != trained.keys():
        raise ValueError(
            f"merge_weights: the state dicts differ in {sorted(start.keys() ^ trained.keys())[:3]}"
        )
    out = {}
    for key, b in trained.items():
        a = start[key]
        if a.shape != b.shape:
            raise ValueError(f"merge_weights: {key} has shape {list(a.shape)} and {list(b.shape)}")
        out[key] = torch.lerp(a, b, keep) if b.is_floating_point() else b.clone()
    return out


class CaptionTeacherStage:
    """The ``caption_teacher`` stage (a :class:`~.loop.Stage`).

    Args:
        models: The model's components (the student's, or the guided teacher's with ``states="forward"``);
            ``models.unet`` is trained, the text encoder is frozen. The teacher is a frozen copy of the UNet
            as given.
        cfg: Hyper-parameters.
        total: Planned steps.
        seed: Data seed.
    """

    def __init__(self, models: NanoModels, cfg: CaptionTeacherConfig, total: int, seed: int) -> None:
        self.m = models
        self.cfg = cfg
        self.total = total
        self.seed = seed
        models.text_encoder.eval().requires_grad_(False)
        self.teacher = frozen_copy(models.unet)
        models.unet.requires_grad_(True)
        self.sigmas = schedule_sigmas(models, cfg.student_steps)  # (steps + 1,) f32
        self.opt = torch.optim.AdamW(models.unet.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))

    def batch(self, i: int) -> tuple[list[world.Edit], list[world.Scene], np.random.Generator]:
        """Step ``i``'s edits, and the target scene of every row (edits' targets, then generate scenes)."""
        rng = np.random.default_rng([self.seed, i])
        n_gen = int(self.cfg.batch * self.cfg.generate_share)
        edits = [world.train_edit(rng) for _ in range(self.cfg.batch - n_gen)]
        scenes = [e.target for e in edits] + [world.train_scene(rng) for _ in range(n_gen)]
        return edits, scenes, rng

    def row_errors(
        self, edits: list[world.Edit], scenes: list[world.Scene], rng: np.random.Generator
    ) -> torch.Tensor:
        """``(B,)`` weighted squared error of each row: the edits, then generate rows of the other scenes.

        ``scenes`` holds every row's target scene (the edits' targets first); ``rng`` draws the noise and
        the steps walked (or the times, for ``forward`` rows). The first ``uncond_share`` of the edit rows
        and of the generate rows are unconditional rows (the ∅ branch; see ``CaptionTeacherConfig``).
        """
        sources = [world.render(e.source) for e in edits]
        targets = [world.render(s) for s in scenes]  # the object weights' target images
        asked = [Example("edit", e.instruction, None, src) for e, src in zip(edits, sources, strict=True)]
        asked += [Example("generate", s.caption(), None) for s in scenes[len(edits) :]]
        captions = [Example("generate", s.caption(), None) for s in scenes]
        n_edit, n_gen = len(edits), len(scenes) - len(edits)
        k_edit, k_gen = round(n_edit * self.cfg.uncond_share), round(n_gen * self.cfg.uncond_share)
        uncond = [b < k_edit or n_edit <= b < n_edit + k_gen for b in range(len(scenes))]
        with torch.no_grad():
            text, mask = encode_texts(self.m, asked, uncond)  # (B, L, D) f32
            ctext, cmask = encode_texts(self.m, captions, uncond)  # (B, Lc, D) f32
            c = Conditions(
                is_edit=torch.tensor([a.task == "edit" for a in asked]),
                text=text,
                mask=mask,
                cond=condition_latents(self.m, asked),  # (B, 4, h, w) sources; zeros for generate
            )
            c.cond[:k_edit] = 0.0  # the ∅ branch of an edit sees a zero condition latent
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            if self.cfg.states == "forward":
                x0 = encode_images(self.m.vae, targets)  # (B, 4, h, w) the targets' latents
                s, _, x = noisy_latents(x0, gen, self.cfg.logit_mean, self.cfg.logit_std, self.m.mu())
            else:
                noise = torch.randn((len(asked), 4, LATENT, LATENT), generator=gen)  # (B, 4, h, w) f32
                j = torch.from_numpy(rng.integers(0, self.cfg.student_steps, len(asked)))  # (B,) walked
                x = student_states(self.m.unet, self.sigmas, noise, c, j)  # (B, 4, h, w) on-policy states
                s = self.sigmas[j]  # (B,)
            zero = torch.zeros_like(c.cond)  # (B, 4, h, w) the generate path's condition
            want = unet_velocity(self.teacher, x, zero, s, ctext, cmask)  # (B, 4, h, w)
        self.m.unet.train()
        v = unet_velocity(self.m.unet, x, c.cond, s, c.text, c.mask)  # (B, 4, h, w)
        rows = [Example("edit", "", t, a.source) for t, a in zip(targets, asked, strict=True)]
        w = object_weights(rows, self.cfg.object_weight)  # (B, 1, h, w)
        return (w * (v - want) ** 2).mean(dim=(1, 2, 3))

    def step(self, i: int) -> dict[str, float]:
        """One optimisation step (data and noise: a pure function of the seed and ``i``)."""
        edits, scenes, rng = self.batch(i)
        per_row = self.row_errors(edits, scenes, rng)  # (B,)
        n_edit = len(edits)
        loss = per_row.mean()
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(i, self.total, self.cfg.lr, self.cfg.warmup)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.m.unet.parameters(), 1.0)
        self.opt.step()
        out = {"loss": float(loss.detach()), "edit": float(per_row[:n_edit].detach().mean())}
        if n_edit < per_row.numel():
            out["generate"] = float(per_row[n_edit:].detach().mean())
        return out

    @torch.no_grad()
    def merge(self) -> None:
        """Keep ``cfg.keep`` of the trained change: the UNet becomes ``merge_weights(start, trained, keep)``.

        ``start`` is the stage's starting UNet (its frozen teacher), ``trained`` the UNet as trained.
        """
        start = self.teacher.state_dict()
        self.m.unet.load_state_dict(merge_weights(start, self.m.unet.state_dict(), self.cfg.keep))

    @torch.no_grad()
    def heldout_error(self, edits: list[world.Edit], seed: int = 0) -> float:
        """Mean edit-row error over fixed edits (16 a batch; noise and steps walked from ``seed``)."""
        errors = []
        for k in range(0, len(edits), 16):
            part = edits[k : k + 16]
            rng = np.random.default_rng([seed, k])
            errors.append(self.row_errors(part, [e.target for e in part], rng))
        return float(torch.cat(errors).mean())

    def state_dict(self) -> dict[str, Any]:
        """Student and optimiser (the teacher is the stage's starting UNet, rebuilt on resume)."""
        return {"unet": self.m.unet.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.m.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
