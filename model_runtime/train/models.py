"""Building the nano components from their configs (fresh, seeded), and the EMA used for evaluation.

No network is written here: the UNet is diffusers' ``DreamLiteUNetModel``, the text encoder transformers'
``Qwen3VLForConditionalGeneration`` (trained from scratch: no pretrained Qwen exists at this size), the VAE
diffusers' ``AutoencoderTiny`` (:mod:`model_runtime.train.vae_fit`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from model_runtime.train import configs, tokenizer_build
from model_runtime.train.configs import NanoSizes


def build_unet(sizes: NanoSizes, seed: int = 0, layout: str = "mobile") -> Any:
    """A freshly initialised nano ``DreamLiteUNetModel`` with a block layout of ``configs.UNET_LAYOUTS``."""
    from diffusers import DreamLiteUNetModel

    cfg = {k: v for k, v in configs.unet_config(sizes).items() if not k.startswith("_")}
    cfg.update(configs.UNET_LAYOUTS[layout])
    torch.manual_seed(seed)
    return DreamLiteUNetModel(**cfg)  # type: ignore[no-untyped-call]


def build_text_encoder(sizes: NanoSizes, tokenizer: Any, seed: int = 0) -> Any:
    """A freshly initialised nano ``Qwen3VLForConditionalGeneration`` for ``tokenizer``."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = tokenizer_build.token_ids(tokenizer)
    cfg = Qwen3VLConfig(
        **configs.text_encoder_config(sizes, tokenizer_build.padded_vocab_size(tokenizer), ids)
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg)
    model.config.dtype = "float32"
    return model


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


class Ema:
    """Exponential moving average of parameters, with the usual warm-up ``min(decay, (1+n)/(10+n))``.

    Args:
        params: The live parameters (the EMA holds detached copies).
        decay: Final decay.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float = 0.999) -> None:
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Blend the live parameters into the average."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Write the averaged values into ``params`` (same order as at construction)."""
        for p, s in zip(params, self.shadow, strict=True):
            p.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        """Shadow values and counter."""
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for s, v in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(v)
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
