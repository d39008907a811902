"""Fitting the nano VAE (diffusers ``AutoencoderTiny``, TAESDXL structure) to the shapes world.

The loss follows the pilot's lessons: objects cover 5–20 % of the pixels, so plain MSE lets their colours
drift; every pixel within 2 px of an object is weighted ``OBJECT_WEIGHT``×. An edge term (L1 between the
horizontal and vertical finite differences of the output and the target, with the same weights) keeps
corners and tips sharp. A small moment penalty keeps each latent channel near zero mean and unit standard
deviation (the pipeline uses the raw latents, scaling 1, shift 0, so the diffusion model sees them as they
are), and the decoder is trained on slightly noisy latents so that small denoising errors decode cleanly.

**Hard colour pairs.** A fit can fall into a trap where the decoder erases one object colour on one
background: the recipe's seed lost every green object on black (mean error 52–56 levels on its pixels, the
other 17 pairs 3–10) from step ~1250 on and never recovered, which cost 9 % of the held-out generate prompts
their object count before any UNet was trained. The trap is a dead zone of the ReLU that closes every
``AutoencoderTinyBlock`` (``fuse``; it is a ReLU whatever the config's ``act_fn``): on a trapped fit 79 % of
the decoder's last block is off at a green object's centre on black (50–63 % for the other colours), the
pixel decodes to (25, 35, 25) and so does it from the best latent an optimiser finds, and the encoder's
gradient from those renders is 4e-7 against 0.006–0.045 for the other colours on black
(``scripts/nano_vae_dead_zone_probe.py``), so no amount of data on the pair moves it (200 steps with every
scene on green-on-black: 51 → 50 levels). Two measures:

* **A leaky fuse while the fit takes shape** (``leak``): during the first ``LEAK_UNTIL`` of the steps the fuse
  of every block is a LeakyReLU whose slope falls linearly from ``leak`` to 0; the rest of the steps, and the
  served model, use the ReLU the class has. A leaky fuse revived the trapped fit above (52 → 13 levels
  within 100 ReLU steps after 150 leaky ones). The checkpoint is the class's own state dict either way.
* **A guard**: every ``HARD_CHECK_EVERY`` steps the stage measures the reconstruction error of each colour ×
  background pair through the ReLU model (:func:`pair_errors`), and until the next check a ``hard_share`` of
  each batch's scenes is put on a pair drawn with probability ∝ error² (:func:`pair_probabilities`): near
  uniform while every pair is poor, focused on the laggards later.

SiLU inside the blocks (``NanoSizes.vae_act_fn``) and the guard alone did not prevent the trap: they avoided
it on an AMX Xeon (every pair ≤ 7.1 levels) and fell into it from the same seed on a Zen 4 EPYC (green on
black 52.7 at the end; docs/nano.md, "The VAE's blind spot").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from model_runtime.train import world
from model_runtime.train.configs import NanoSizes, vae_config
from model_runtime.train.loop import cosine_lr

VaePrecision = Literal["auto", "bf16", "fp32"]

OBJECT_WEIGHT = 16.0
EDGE_WEIGHT = 1.0
MOMENT_WEIGHT = 0.01
LATENT_NOISE = 0.05
L1_WEIGHT = 0.5  # L1 keeps pulling small colour errors to zero, where MSE's gradient vanishes
HARD_CHECK_EVERY = 250
HARD_POWER = 2.0
HARD_SHARE = 0.5
HARD_FACTOR = 3.0  # a finished fit is sound when no pair is above max(3 × median, 20) levels
HARD_MIN_LEVELS = 20.0
LEAK = 0.1
LEAK_UNTIL = 2 / 3

Pair = tuple[str, str]
"""An object colour and a background name."""


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16).

    Elsewhere (e.g. AVX2-only CPUs such as AMD Zen 3) PyTorch emulates bf16 and a bf16 autocast step of the
    VAE stage is about 8× *slower* than fp32 (2.5 s vs 0.31 s per step measured on a 2-core AMD EPYC).
    """
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_precision(precision: VaePrecision) -> Literal["bf16", "fp32"]:
    """``auto`` → ``bf16`` where :func:`native_bf16`, else ``fp32``."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def fuse_slope(i: int, total: int, leak: float) -> float:
    """The blocks' fuse slope at step ``i``: ``leak`` falling linearly to 0 at ``LEAK_UNTIL`` of the steps."""
    end = LEAK_UNTIL * total
    return 0.0 if leak <= 0 or i >= end else leak * (1.0 - i / end)


def set_fuse_slope(vae: Any, slope: float) -> None:
    """Make the closing activation of every ``AutoencoderTinyBlock`` a LeakyReLU (``slope`` 0: the ReLU)."""
    from torch import nn

    for module in vae.modules():
        if type(module).__name__ == "AutoencoderTinyBlock":
            module.fuse = nn.LeakyReLU(slope) if slope > 0 else nn.ReLU()


def build_vae(sizes: NanoSizes, seed: int = 0) -> Any:
    """A freshly initialised ``AutoencoderTiny`` with the nano config."""
    from diffusers import AutoencoderTiny

    cfg = {k: v for k, v in vae_config(sizes).items() if not k.startswith("_")}
    torch.manual_seed(seed)
    return AutoencoderTiny(**cfg)  # type: ignore[no-untyped-call]


def with_pair(scene: world.Scene, pair: Pair, rng: np.random.Generator) -> world.Scene:
    """``scene`` on the pair's background with one random object in the pair's colour.

    An object that already had that colour takes the recoloured object's old colour, so colours stay distinct.
    """
    colour, background = pair
    k = int(rng.integers(len(scene.objects)))
    old = scene.objects[k].colour
    objects = tuple(
        replace(o, colour=colour) if j == k else replace(o, colour=old) if o.colour == colour else o
        for j, o in enumerate(scene.objects)
    )
    return world.Scene(objects=objects, background=background)


def train_scenes(
    rng: np.random.Generator,
    n: int,
    pairs: Sequence[Pair] = (),
    probabilities: Sequence[float] = (),
    hard_share: float = 0.0,
) -> list[world.Scene]:
    """``n`` training scenes; with probability ``hard_share`` each is put on one of ``pairs``.

    The pair is drawn with ``probabilities``. A scene that the change moves into the held-out split is drawn
    again. Without pairs the draws are exactly ``world.train_scene``'s.
    """
    scenes: list[world.Scene] = []
    while len(scenes) < n:
        scene = world.train_scene(rng)
        if pairs and rng.random() < hard_share:
            scene = with_pair(scene, pairs[int(rng.choice(len(pairs), p=np.asarray(probabilities)))], rng)
            if world.is_heldout_scene(scene):
                continue
        scenes.append(scene)
    return scenes


def image_batch(
    rng: np.random.Generator,
    batch: int,
    crop: int = world.IMAGE_SIZE,
    pairs: Sequence[Pair] = (),
    probabilities: Sequence[float] = (),
    hard_share: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders of training scenes, cut to random windows, and their object weights.

    Windows of ``crop``×``crop`` pixels lie on the 8-px latent grid; the autoencoder is convolutional, so
    crops teach it the same local statistics at a fraction of the cost. ``pairs``, ``probabilities``,
    ``hard_share``: see :func:`train_scenes`.

    Returns:
        ``(B, 3, crop, crop)`` float32 images in [−1, 1] and ``(B, 1, crop, crop)`` float32 pixel weights.
    """
    scenes = train_scenes(rng, batch, pairs, probabilities, hard_share)
    renders = [world.render(s) for s in scenes]
    cells = (world.IMAGE_SIZE - crop) // 8 + 1
    offsets = rng.integers(0, cells, size=(batch, 2)) * 8
    images = np.stack(
        [img[oy : oy + crop, ox : ox + crop] for img, (oy, ox) in zip(renders, offsets, strict=True)]
    )  # (B, crop, crop, 3) uint8
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) float32
    bg = x[:, :, :1, :1]  # (B, 3, 1, 1): the corner pixel is background
    obj = ((x - bg).abs().amax(dim=1, keepdim=True) > 0.02).float()  # (B, 1, H, W) object coverage
    obj = F.max_pool2d(obj, kernel_size=5, stride=1, padding=2)  # dilate by 2 px: edges count as object
    return x, 1.0 + (OBJECT_WEIGHT - 1.0) * obj


def _grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vae_loss(
    vae: Any, x: torch.Tensor, w: torch.Tensor, latent_noise: float = LATENT_NOISE
) -> dict[str, torch.Tensor]:
    """Weighted reconstruction + edge + latent-moment loss of one batch.

    Args:
        vae: The autoencoder.
        x: ``(B, 3, H, W)`` images in [−1, 1].
        w: ``(B, 1, H, W)`` pixel weights.
        latent_noise: Std of the Gaussian noise added to the latents before decoding.

    Returns:
        ``loss`` (the total) and its parts.
    """
    z = vae.encode(x).latents.float()  # (B, 4, H/8, W/8)
    z_in = z + latent_noise * torch.randn_like(z) if latent_noise > 0 else z
    y = vae.decode(z_in).sample.float()  # (B, 3, H, W) in about [−1, 1]
    norm = w.mean()
    err = y - x
    rec = ((err**2 + L1_WEIGHT * err.abs()) * w).mean() / norm
    gx_y, gy_y = _grad(y)
    gx_x, gy_x = _grad(x)
    edge = (
        ((gx_y - gx_x).abs() * w[..., :, 1:]).mean() + ((gy_y - gy_x).abs() * w[..., 1:, :]).mean()
    ) / norm
    mean = z.mean(dim=(0, 2, 3))  # (4,)
    std = z.std(dim=(0, 2, 3))  # (4,)
    moment = (mean**2).mean() + (torch.log(std + 1e-6) ** 2).mean()
    loss = rec + EDGE_WEIGHT * edge + MOMENT_WEIGHT * moment
    return {"loss": loss, "rec": rec, "edge": edge, "moment": moment}


class VaeStage:
    """Stage 1: fit the VAE.

    Args:
        vae: The autoencoder to train.
        total: Planned steps (for the learning-rate schedule).
        batch: Images per step.
        lr: Peak learning rate.
        seed: Data seed.
        precision: Forward precision: ``bf16`` autocast (fp32 master weights; 1.7× faster than fp32 with
            channels_last on a CPU with AMX), ``fp32``, or ``auto`` (bf16 only where the CPU has it natively).
        hard_share: Share of each batch's scenes put on a colour pair drawn by its error (module docstring); 0
            turns the checks off (the fit of the weights shipped before them).
        leak: Initial negative slope of the blocks' fuse (module docstring); 0: the ReLU throughout (the
            fits of the weights shipped before it).
    """

    def __init__(
        self,
        vae: Any,
        total: int,
        batch: int = 8,
        lr: float = 2e-3,
        seed: int = 1,
        crop: int = 64,
        precision: VaePrecision = "auto",
        hard_share: float = 0.0,
        leak: float = 0.0,
    ) -> None:
        self.vae = vae.to(memory_format=torch.channels_last)
        self.crop = crop
        self.total = total
        self.batch = batch
        self.lr = lr
        self.seed = seed
        self.precision = resolve_precision(precision)
        self.hard_share = hard_share
        self.leak = leak
        self.pairs: list[Pair] = []
        self.probabilities: list[float] = []
        self.hard_log: list[dict[str, Any]] = []
        self.opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))

    def check(self, i: int) -> None:
        """Measure every colour pair and set the pair probabilities of the next ``HARD_CHECK_EVERY`` steps."""
        errors = pair_errors(self.vae)
        self.pairs = list(errors)
        self.probabilities = pair_probabilities(errors)
        worst = max(errors, key=lambda p: errors[p])
        self.hard_log.append(
            {
                "step": i,
                "worst": list(worst),
                "error": errors[worst],
                "probability": round(self.probabilities[self.pairs.index(worst)], 4),
                "median": round(float(np.median(list(errors.values()))), 2),
            }
        )

    def step(self, i: int) -> dict[str, float]:
        """One optimisation step on batch ``i``."""
        if self.hard_share > 0 and i > 0 and i % HARD_CHECK_EVERY == 0:
            set_fuse_slope(self.vae, 0.0)  # measured as it will be served
            self.check(i)
        set_fuse_slope(self.vae, fuse_slope(i, self.total, self.leak))
        rng = np.random.default_rng([self.seed, i])
        x, w = image_batch(rng, self.batch, self.crop, self.pairs, self.probabilities, self.hard_share)
        x = x.contiguous(memory_format=torch.channels_last)
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(i, self.total, self.lr, warmup=min(50, self.total // 10 + 1))
        self.vae.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            parts = vae_loss(self.vae, x, w)
        self.opt.zero_grad(set_to_none=True)
        parts["loss"].backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.opt.step()
        set_fuse_slope(self.vae, 0.0)  # between steps the model is the class's own
        return {k: float(v.detach()) for k, v in parts.items()}

    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser and the current pair probabilities."""
        return {
            "vae": self.vae.state_dict(),
            "opt": self.opt.state_dict(),
            "pairs": [list(p) for p in self.pairs],
            "probabilities": self.probabilities,
            "hard_log": self.hard_log,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.vae.load_state_dict(state["vae"])
        self.opt.load_state_dict(state["opt"])
        self.pairs = [(str(c), str(b)) for c, b in state.get("pairs", [])]
        self.probabilities = [float(p) for p in state.get("probabilities", [])]
        self.hard_log = list(state.get("hard_log", []))


@torch.no_grad()
def reconstruct(vae: Any, images: np.ndarray[Any, np.dtype[np.uint8]]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Encode and decode uint8 images ``(B, H, W, 3)`` the way the pipeline does (no scaling)."""
    vae.eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
    y = vae.decode(vae.encode(x).latents).sample  # (B, 3, H, W)
    y = ((y / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.asarray(y.permute(0, 2, 3, 1).numpy(), dtype=np.uint8)  # (B, H, W, 3) uint8


@torch.no_grad()
def pair_errors(vae: Any) -> dict[Pair, float]:
    """Mean absolute error (0–255 levels) on the object pixels of each colour × background pair.

    Each pair is measured on a large object of every shape in the centre, encoded and decoded as the pipeline
    does. The VAE is left in training mode.
    """
    errors: dict[Pair, float] = {}
    for background, bg_rgb in world.BACKGROUNDS.items():
        for colour in world.COLOURS:
            images = np.stack(
                [
                    world.render(world.Scene((world.ShapeObject(s, colour, "large", "centre"),), background))
                    for s in world.SHAPES
                ]
            )  # (4, H, W, 3) uint8
            out = reconstruct(vae, images)  # (4, H, W, 3) uint8
            obj = np.abs(images.astype(np.float32) - np.asarray(bg_rgb, np.float32)).max(axis=-1) > 30
            err = np.abs(out.astype(np.float32) - images.astype(np.float32))[obj]
            errors[(colour, background)] = round(float(err.mean()), 2)
    vae.train()
    return errors


def pair_probabilities(errors: dict[Pair, float]) -> list[float]:
    """Sampling probabilities ∝ error^``HARD_POWER`` of the pairs, in the order of ``errors``."""
    e = np.asarray(list(errors.values()), dtype=np.float64) ** HARD_POWER  # (pairs,)
    if e.sum() <= 0:  # a perfect fit: uniform
        return [1.0 / len(e)] * len(e)
    return [float(v) for v in e / e.sum()]


def hard_pairs(errors: dict[Pair, float]) -> list[Pair]:
    """The pairs a finished fit has failed: error above ``max(HARD_FACTOR × median, HARD_MIN_LEVELS)``."""
    limit = max(HARD_FACTOR * float(np.median(list(errors.values()))), HARD_MIN_LEVELS)
    return [pair for pair, err in errors.items() if err > limit]


@torch.no_grad()
def latent_stats(vae: Any, n: int = 64, seed: int = 99) -> dict[str, list[float]]:
    """Per-channel mean and std of the latents of ``n`` training renders."""
    vae.eval()
    x, _ = image_batch(np.random.default_rng(seed), n)
    z = vae.encode(x).latents  # (n, 4, 16, 16)
    return {"mean": z.mean(dim=(0, 2, 3)).tolist(), "std": z.std(dim=(0, 2, 3)).tolist()}
