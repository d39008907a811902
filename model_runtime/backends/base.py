"""Stage ④ backend contract: the components one pipeline loop drives, whatever computes them.

A backend turns model artifacts (the official weight folder for ``torch``, a device bundle for ``onnx`` and
``qnn``) into four components with numpy-in/numpy-out calls, plus the schedule table and the model's
constants. Arrays cross this boundary as float32 (holding values of the backend's compute dtype) and int64;
the pipeline owns every other step, so all backends share the exact same loop, sampler and postprocess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from model_runtime.dtypes import DType
from model_runtime.folder import FolderConfig
from model_runtime.sampler import Schedule


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Model facts the pipeline needs, from a folder or a bundle manifest.

    Attributes:
        config: Pipeline constants (drop_idx, sizes, steps, variant).
        processor_config: The VLM image processor config (patch, merge, temporal patch, mean/std).
        tokenizer_file: ``tokenizer.json`` used for the text encoder.
        image_token_id: Id of ``<|image_pad|>``.
        latent_channels: VAE latent channels (4).
        vae_scale: Pixels per latent cell (8).
    """

    config: FolderConfig
    processor_config: dict[str, Any]
    tokenizer_file: Path
    image_token_id: int
    latent_channels: int = 4
    vae_scale: int = 8


@dataclass(frozen=True, slots=True)
class TextEncoderInput:
    """One tokenized prompt for the text encoder.

    Attributes:
        input_ids: ``(T,)`` int64.
        pixel_values: ``(P, K)`` float32 VLM patches of the edit source, or None.
        image_grid_thw: ``(1, 3)`` int64, or None.
    """

    input_ids: NDArray[np.int64]
    pixel_values: NDArray[np.float32] | None = None
    image_grid_thw: NDArray[np.int64] | None = None


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What computed a result, for recipes, ``/v1/models`` and traces.

    Attributes:
        name: ``torch``, ``onnx`` or ``qnn``.
        device: ``cpu``, ``cuda`` or ``cuda:N``; for qnn the target (``sm8650``).
        dtype: Compute dtype of the loop.
        provider: The effective provider (``torch``, ``CPUExecutionProvider``, ``QNNExecutionProvider`` …).
        encoder_id: Identity of the text encoder (part of the prompt-cache key).
        details: Backend-specific facts (bundle id, graph sha256, provider options, versions).
    """

    name: str
    device: str
    dtype: DType
    provider: str
    encoder_id: str
    details: dict[str, Any] = field(default_factory=dict)


class TextEncoder(Protocol):
    """Qwen3-VL text features: the last decoder layer's output before the final norm."""

    def __call__(self, inputs: TextEncoderInput) -> NDArray[np.float32]:
        """Return ``(T, D)`` float32 hidden states of the full sequence (no tokens dropped yet)."""
        ...


class Denoiser(Protocol):
    """The DreamLite UNet on the in-context (target | condition) latent."""

    def __call__(
        self,
        sample: NDArray[np.float32],
        timestep: NDArray[np.float32],
        text: NDArray[np.float32],
        text_mask: NDArray[np.int64],
        time_ids: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """Velocity of the in-context latent.

        Shapes: ``sample`` (B, 4, h, 2w), ``timestep`` (B,), ``text`` (B, L, D), ``text_mask`` (B, L)
        with 1 = keep, ``time_ids`` (B, 2) = [W, H] → velocity (B, 4, h, 2w) float32.
        """
        ...


class VaeEncoder(Protocol):
    """TAESD encoder: images in [−1, 1] → raw latents (scaling 1, shift 0)."""

    def __call__(self, images: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(B, 3, H, W)`` → ``(B, 4, H/8, W/8)`` float32."""
        ...


class VaeDecoder(Protocol):
    """TAESD decoder: raw latents → images in [−1, 1] (before clamping)."""

    def __call__(self, latents: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(B, 4, h, w)`` → ``(B, 3, 8h, 8w)`` float32."""
        ...


class Backend(Protocol):
    """A loaded model on one backend. Build one with :func:`model_runtime.backends.create_backend`."""

    info: BackendInfo
    spec: ModelSpec
    text_encoder: TextEncoder
    denoiser: Denoiser
    vae_encoder: VaeEncoder
    vae_decoder: VaeDecoder
    text_len: int | None
    """Static text length of the denoiser graph (pad/trim target), or None for any length."""

    def schedule(self, width: int, height: int, steps: int) -> Schedule:
        """The sigma/timestep table for a working size."""
        ...

    def supported_sizes(self) -> list[tuple[int, int]] | None:
        """Working sizes a static-shape backend can run, or None for any valid size."""
        ...

    def artifact_sha256(self) -> str:
        """Content hash of what was loaded (weight folder or bundle id)."""
        ...

    def close(self) -> None:
        """Release sessions and memory."""
        ...
