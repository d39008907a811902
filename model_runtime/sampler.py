"""Stage ⑤ sampler: the flow-matching Euler schedule and update of the official pipeline.

The sigma/timestep table comes from diffusers' ``FlowMatchEulerDiscreteScheduler`` configured by the
folder's ``scheduler_config.json`` (input sigmas ``linspace(1, 1/N, N)``, dynamic exponential shift with
``mu`` from the *target* latent's token count), computed once per (size, steps) and then held as float32
arrays; static-graph bundles carry the same table in their manifest. The update is the scheduler's
``step``: ``x ← x + (σ_{i+1} − σ_i)·v``, re-implemented here in numpy with torch's exact dtype rules so
that one loop serves every backend (checked bit-for-bit against ``scheduler.step`` in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.dtypes import DType, round_to

# The official pipeline's fallbacks when a scheduler config lacks a key.
_SHIFT_DEFAULTS = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.16}


@dataclass(frozen=True, slots=True)
class Schedule:
    """A resolved denoising schedule.

    Attributes:
        sigmas: ``(N + 1,)`` float32, ending in 0.
        timesteps: ``(N,)`` float32 values fed to the UNet (1000·σ, before dtype rounding).
        mu: The dynamic-shift ``mu`` (None when the config has no dynamic shifting).
    """

    sigmas: NDArray[np.float32]
    timesteps: NDArray[np.float32]
    mu: float | None

    @property
    def steps(self) -> int:
        """Number of denoising steps."""
        return int(self.timesteps.shape[0])

    def unet_timesteps(self, dtype: DType) -> NDArray[np.float32]:
        """Timesteps as the UNet sees them: the official code casts them to the latents' dtype."""
        return round_to(self.timesteps, dtype)


def image_seq_len(width: int, height: int) -> int:
    """Token count used for the shift: (H/8/2)·(W/8/2) of the target (not the in-context width)."""
    return (height // 8 // 2) * (width // 8 // 2)


def shift_mu(config: dict[str, Any], width: int, height: int) -> float:
    """The official ``calculate_shift``: linear in the target token count between base and max."""
    base_len = int(config.get("base_image_seq_len", _SHIFT_DEFAULTS["base_image_seq_len"]))
    max_len = int(config.get("max_image_seq_len", _SHIFT_DEFAULTS["max_image_seq_len"]))
    base_shift = float(config.get("base_shift", _SHIFT_DEFAULTS["base_shift"]))
    max_shift = float(config.get("max_shift", _SHIFT_DEFAULTS["max_shift"]))
    m = (max_shift - base_shift) / (max_len - base_len)
    b = base_shift - m * base_len
    return image_seq_len(width, height) * m + b


def compute_schedule(scheduler_config: dict[str, Any], width: int, height: int, steps: int) -> Schedule:
    """The schedule of the official pipeline for a target size.

    Args:
        scheduler_config: ``scheduler/scheduler_config.json``.
        width: Target (working) width in pixels.
        height: Target height in pixels.
        steps: Number of denoising steps.

    Returns:
        The float32 sigma and timestep tables.
    """
    import json

    return _cached_schedule(json.dumps(scheduler_config, sort_keys=True), width, height, steps)


@lru_cache(maxsize=256)
def _cached_schedule(config_json: str, width: int, height: int, steps: int) -> Schedule:
    import json

    from diffusers import FlowMatchEulerDiscreteScheduler

    config = json.loads(config_json)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)  # type: ignore[no-untyped-call]
    mu = shift_mu(config, width, height) if config.get("use_dynamic_shifting", False) else None
    sigmas_in = np.linspace(1.0, 1.0 / steps, steps)
    scheduler.set_timesteps(sigmas=sigmas_in, mu=mu)
    sigmas = scheduler.sigmas.numpy().astype(np.float32)  # (N + 1,) float32
    timesteps = scheduler.timesteps.numpy().astype(np.float32)  # (N,) float32
    sigmas.setflags(write=False)
    timesteps.setflags(write=False)
    return Schedule(sigmas=sigmas, timesteps=timesteps, mu=mu)


def euler_step(
    latents: NDArray[np.float32], velocity: NDArray[np.float32], sigma: float, sigma_next: float, dtype: DType
) -> NDArray[np.float32]:
    """One Euler step with the official scheduler's arithmetic.

    ``scheduler.step`` upcasts the sample to float32 and computes ``sample + dt * v`` where ``dt`` is a
    0-dim float32 tensor: torch rounds ``dt`` to the velocity's dtype, multiplies in that dtype, adds in
    float32 and casts the result back to the velocity's dtype.

    Args:
        latents: ``(B, 4, h, w)`` float32 holding values of ``dtype``.
        velocity: ``(B, 4, h, w)`` float32 holding values of ``dtype`` (the left half of the UNet output).
        sigma: σ_i (float32 value).
        sigma_next: σ_{i+1}.
        dtype: Compute dtype.

    Returns:
        ``(B, 4, h, w)`` float32 latents after the step.
    """
    dt = np.float32(np.float32(sigma_next) - np.float32(sigma))
    if dtype == "float32":
        return latents + dt * velocity  # (B, 4, h, w) float32
    dt_c = round_to(np.asarray([dt], dtype=np.float32), dtype)[0]
    update = round_to(dt_c * velocity, dtype)  # (B, 4, h, w) in dtype
    return round_to(latents + update, dtype)  # float32 add, then cast back
