"""Export stage ① (trace): the torch modules that become the device graphs, in export-friendly form.

The official Android export (``deploy/android``) traces three graphs with static shapes and batch 1:

* ``unet``: ``sample [1, 4, h, 2w]`` (target | condition along width), ``timestep [1]``,
  ``encoder_hidden_states [1, SEQ, D]``, ``encoder_attention_mask [1, SEQ]`` (float 1/0), ``time_ids [1, 2]``
  (= [W, H]) → ``noise_pred [1, 4, h, 2w]``;
* ``vae_decoder``: ``latent [1, 4, h, w]`` → ``image [1, 3, H, W]`` (≈ [−1, 1]);
* ``vae_encoder``: ``image [1, 3, H, W]`` in [−1, 1] → ``latent [1, 4, h, w]``.

Attention is rewritten as the official ``ExportFriendlyAttnProcessor`` does: the single K/V head is
materialised for every query head with a 4-D ``repeat`` (an ONNX ``Tile``; ``repeat_interleave`` lowers to
5-D ops that QNN rejects), and SDPA is replaced by explicit matmul → ×1/√d → + mask bias → softmax → matmul.
The numerics are unchanged (checked against diffusers' own processor in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "encoder_attention_mask", "time_ids")
UNET_OUTPUTS = ("noise_pred",)
VAE_DECODER_INPUTS = ("latent",)
VAE_DECODER_OUTPUTS = ("image",)
VAE_ENCODER_INPUTS = ("image",)
VAE_ENCODER_OUTPUTS = ("latent",)


class ExplicitAttnProcessor:
    """DreamLite attention (MQA, per-head q/k RMSNorm) as plain matmul/softmax, K/V materialised in 4-D."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention forward with the call signature diffusers' ``Attention`` uses for its processors."""
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hh * ww).transpose(1, 2)  # (B, N, C)
        batch, tokens, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states  # (B, M, Dc)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        heads = int(attn.heads)
        query = attn.to_q(hidden_states)  # (B, N, heads·d)
        key = attn.to_k(context)  # (B, M, kv·d)
        value = attn.to_v(context)  # (B, M, kv·d)
        head_dim = query.shape[-1] // heads
        kv_heads = key.shape[-1] // head_dim

        query = query.view(batch, tokens, heads, head_dim)  # (B, N, heads, d)
        key = key.view(batch, -1, kv_heads, head_dim)  # (B, M, kv, d)
        value = value.view(batch, -1, kv_heads, head_dim)  # (B, M, kv, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        query = query.transpose(1, 2)  # (B, heads, N, d)
        key = key.transpose(1, 2)  # (B, kv, M, d)
        value = value.transpose(1, 2)  # (B, kv, M, d)
        if kv_heads == 1:
            key = key.repeat(1, heads, 1, 1)  # (B, heads, M, d): a 4-D Tile, as the official export
            value = value.repeat(1, heads, 1, 1)  # (B, heads, M, d)
        elif kv_heads != heads:
            # GQA, several KV heads: head h reads KV head h // group (repeat_interleave order); 4-D Gather.
            group = heads // kv_heads
            index = torch.arange(heads, device=key.device) // group
            key = key.index_select(1, index)  # (B, heads, M, d)
            value = value.index_select(1, index)  # (B, heads, M, d)

        scores = torch.matmul(query, key.transpose(-1, -2)) * float(attn.scale)  # (B, heads, N, M)
        if attention_mask is not None:
            # The UNet passes the text mask as an additive bias (1 − m)·(−10000) of shape (B, 1, M).
            scores = scores + attention_mask.reshape(batch, 1, -1, attention_mask.shape[-1])
        probs = torch.softmax(scores, dim=-1)  # (B, heads, N, M)
        out = torch.matmul(probs, value)  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # (B, N, C)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor  # type: ignore[no-any-return]


class UNetGraph(nn.Module):
    """The UNet with the official graph signature (float mask, ``time_ids`` as a plain input)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """``(1, 4, h, 2w)`` velocity of the in-context latent."""
        out: torch.Tensor = self.unet(
            sample,  # (1, 4, h, 2w)
            timestep,  # (1,)
            encoder_hidden_states=encoder_hidden_states,  # (1, SEQ, D)
            encoder_attention_mask=encoder_attention_mask,  # (1, SEQ) float 1/0
            added_cond_kwargs={"time_ids": time_ids},  # (1, 2) = [W, H]
            return_dict=False,
        )[0]
        return out


class VaeDecoderGraph(nn.Module):
    """``AutoencoderTiny.decode`` (scaling 1, shift 0)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``(1, 4, h, w)`` → ``(1, 3, 8h, 8w)``."""
        image: torch.Tensor = self.vae.decode(latent, return_dict=False)[0]  # type: ignore[operator]
        return image


class VaeEncoderGraph(nn.Module):
    """``AutoencoderTiny.encode(x).latents`` (no scaling)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, 3, H, W)`` in [−1, 1] → ``(1, 4, H/8, W/8)``."""
        latent: torch.Tensor = self.vae.encode(image).latents  # type: ignore[operator]
        return latent


@dataclass(frozen=True, slots=True)
class TorchModels:
    """The float32 torch modules of one DreamLite folder, ready to trace."""

    unet: nn.Module
    vae: nn.Module
    text_dim: int
    latent_channels: int
    vae_scale: int


def load_torch_models(model_dir: Any) -> TorchModels:
    """Load the UNet (explicit attention processor) and the VAE of a folder in float32, eval mode.

    Args:
        model_dir: A DreamLite folder in the official layout.

    Returns:
        The modules and the dimensions the graphs need.
    """
    from diffusers import AutoencoderTiny, DreamLiteUNetModel

    unet: Any = DreamLiteUNetModel.from_pretrained(  # type: ignore[no-untyped-call]
        model_dir, subfolder="unet", torch_dtype=torch.float32
    )
    vae: Any = AutoencoderTiny.from_pretrained(  # type: ignore[no-untyped-call]
        model_dir, subfolder="vae", torch_dtype=torch.float32
    )
    return torch_models(unet, vae)


def torch_models(unet: Any, vae: Any) -> TorchModels:
    """Prepare loaded float32 modules for tracing (explicit attention processor, eval mode).

    Args:
        unet: A ``DreamLiteUNetModel`` (e.g. the torch backend's, to avoid a second copy in memory).
        vae: An ``AutoencoderTiny``.
    """
    unet.set_attn_processor(ExplicitAttnProcessor())
    for module in (unet, vae):
        module.eval().requires_grad_(False)
    config = unet.config
    text_dim = int(config.encoder_hid_dim or config.cross_attention_dim)
    vae_scale = 2 ** (len(vae.config.encoder_block_out_channels) - 1)
    return TorchModels(
        unet=unet,
        vae=vae,
        text_dim=text_dim,
        latent_channels=int(vae.config.latent_channels),
        vae_scale=vae_scale,
    )
