"""The recipe's ``align`` stage: the VLM learns to say, for an edit request, what the target's caption says.

DreamLite edits through a pretrained VLM that already *understands* a source image plus an instruction; the
UNet reads the edited scene from its features. The nano VLM learns to read in the ``text`` and ``read``
stages through a readout head, but what matters is how the UNet reads the features, and after ``t2i`` the
UNet reads one kind well: captions. The text path's ceiling (each held-out edit generated from its target's
caption) scores far above the editor (``docs/nano.md``), so this stage closes the gap from the VLM's side.

For an edit triple (source, instruction, target), the T2I UNet (frozen, the ``t2i`` stage's weights, zero
condition latent as in T2I) predicts a velocity on a noisy target latent twice:

* with the features of the **target's caption** from a frozen copy of the encoder (the reference), and
* with the features of the **edit request** (source image + instruction) from the encoder being trained;

the loss is the (object-weighted) squared difference, back-propagated through the frozen UNet into the
encoder. A share of caption rows (live caption features against the frozen copy's) keeps the caption
features the UNet has learned where they are. x_t and t are drawn as in the diffusion stages (logit-normal,
resolution-shifted), so the features are matched where the UNet uses them.

The encoder leaves the stage for ``edit`` (which then starts from features that already mean the edited
scene); the UNet is not changed here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model_runtime.train.diffusion import (
    Example,
    LatentCache,
    NanoModels,
    draw_examples,
    noisy_latents,
    object_weights,
    unet_velocity,
)
from model_runtime.train.loop import cosine_lr
from model_runtime.train.text_features import TextRequest


@dataclass(frozen=True, slots=True)
class AlignConfig:
    """Hyper-parameters of the ``align`` stage.

    Attributes:
        batch: Rows per step.
        lr: Peak learning rate of the text encoder.
        warmup: Warm-up steps.
        caption_share: Share of caption rows (anchors of the caption features).
        object_weight: Loss weight of latent cells that touch an object (as the diffusion stages).
        logit_mean / logit_std: Timestep distribution before the shift.
        weight_decay: AdamW weight decay.
        pool: Fixed pool of scenes and edits per task (latent cache), as the diffusion stages.
    """

    batch: int = 32
    lr: float = 5e-4
    warmup: int = 20
    caption_share: float = 0.25
    object_weight: float = 4.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weight_decay: float = 0.01
    pool: int | None = 8000


def reference_requests(examples: Sequence[Example]) -> list[TextRequest]:
    """What each row should mean: the caption of its target (the caption itself for caption rows)."""
    out = []
    for e in examples:
        prompt = e.caption if e.task == "edit" else e.prompt
        if prompt is None:
            raise ValueError("an edit row without its target's caption (draw with target_captions)")
        out.append(TextRequest("generate", prompt))
    return out


def requests(examples: Sequence[Example]) -> list[TextRequest]:
    """The rows as the pipeline encodes them (edit: instruction + source image)."""
    return [
        TextRequest("edit", e.prompt, e.source) if e.task == "edit" else TextRequest("generate", e.prompt)
        for e in examples
    ]


class AlignStage:
    """The ``align`` stage (a :class:`~.loop.Stage`).

    Args:
        models: ``models.unet`` is the T2I UNet (frozen here); ``models.text_encoder`` is trained.
        cfg: Hyper-parameters.
        total: Planned steps.
        seed: Data seed.
    """

    def __init__(self, models: NanoModels, cfg: AlignConfig, total: int, seed: int) -> None:
        self.m = models
        self.cfg = cfg
        self.total = total
        self.seed = seed
        self.mu = models.mu()
        self.cache = LatentCache(models.vae)
        models.unet.eval().requires_grad_(False)
        self.reference = copy.deepcopy(models.text_encoder).eval().requires_grad_(False)
        models.text_encoder.requires_grad_(True)  # the stage's only learner, whatever a caller froze before
        self.opt = torch.optim.AdamW(
            models.text_encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99)
        )

    def batch(self, i: int) -> tuple[list[Example], torch.Generator]:
        """The rows of step ``i`` and its noise generator (a pure function of the seed and ``i``)."""
        rng = np.random.default_rng([self.seed, i])
        captions = np.random.default_rng([self.seed, i, 1])
        share = 1.0 - self.cfg.caption_share
        examples = draw_examples(
            rng, self.cfg.batch, share, self.cfg.pool, self.seed, target_captions=captions
        )
        return examples, torch.Generator().manual_seed(int(rng.integers(2**62)))

    def gap(self, examples: Sequence[Example], gen: torch.Generator, grad: bool = True) -> torch.Tensor:
        """The weighted mean squared difference of the two velocities on one batch."""
        cfg, m = self.cfg, self.m
        x0 = self.cache([e.target for e in examples], [e.target_key for e in examples])  # type: ignore[misc]
        t, _, x_t = noisy_latents(x0, gen, cfg.logit_mean, cfg.logit_std, self.mu)  # (B,), (B, 4, h, w)
        zeros = torch.zeros_like(x0)  # (B, 4, h, w) the T2I UNet's condition
        with torch.no_grad():
            ref, ref_mask = m.featurizer.encode_mixed(self.reference, reference_requests(examples))
            v_ref = unet_velocity(m.unet, x_t, zeros, t, ref, ref_mask)  # (B, 4, h, w)
        with torch.set_grad_enabled(grad):
            text, mask = m.featurizer.encode_mixed(m.text_encoder, requests(examples))  # (B, L, D), (B, L)
            v = unet_velocity(m.unet, x_t, zeros, t, text, mask)  # (B, 4, h, w)
            w = object_weights(examples, cfg.object_weight)  # (B, 1, h, w)
            return ((v - v_ref) ** 2 * w).mean() / w.mean()

    def step(self, i: int) -> dict[str, float]:
        """One optimisation step."""
        examples, gen = self.batch(i)
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(i, self.total, self.cfg.lr, self.cfg.warmup)
        self.m.text_encoder.train()
        loss = self.gap(examples, gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.m.text_encoder.parameters(), 1.0)
        self.opt.step()
        return {"loss": float(loss.detach())}

    @torch.no_grad()
    def heldout_gap(self, examples: Sequence[Example], seed: int = 0, batch: int = 48) -> float:
        """Mean gap over fixed examples (e.g. held-out edits) at seeded times and noise."""
        self.m.text_encoder.eval()
        total = 0.0
        for k in range(0, len(examples), batch):
            chunk = examples[k : k + batch]
            gen = torch.Generator().manual_seed(seed + k)
            total += float(self.gap(chunk, gen, grad=False)) * len(chunk)
        return total / max(1, len(examples))

    def state_dict(self) -> dict[str, Any]:
        """Encoder and optimiser (the UNet and the reference are not changed)."""
        return {"text_encoder": self.m.text_encoder.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.m.text_encoder.load_state_dict(state["text_encoder"])
        self.opt.load_state_dict(state["opt"])
