"""The export-friendly attention processor computes what diffusers' own DreamLite processor computes."""

from __future__ import annotations

from pathlib import Path

import torch

from model_runtime.export.graphs import ExplicitAttnProcessor, UNetGraph, load_torch_models


def test_explicit_attention_matches_the_stock_processor(tiny_model_dir: Path) -> None:
    from diffusers import DreamLiteUNetModel

    models = load_torch_models(tiny_model_dir)
    stock = DreamLiteUNetModel.from_pretrained(tiny_model_dir, subfolder="unet").eval()  # type: ignore[no-untyped-call]
    assert all(isinstance(p, ExplicitAttnProcessor) for p in models.unet.attn_processors.values())
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 16, generator=gen)  # (1, 4, h, 2w)
    text = torch.randn(1, 24, models.text_dim, generator=gen)
    mask = torch.zeros(1, 24)
    mask[:, :9] = 1  # padded text: the bias must hide the padding exactly as the stock path does
    time_ids = torch.tensor([[64.0, 64.0]])
    t = torch.tensor([700.0])
    with torch.inference_mode():
        ours = UNetGraph(models.unet)(sample, t, text, mask, time_ids)
        ref = stock(
            sample,
            t,
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
            added_cond_kwargs={"time_ids": time_ids},
            return_dict=False,
        )[0]
    assert (ours - ref).abs().max().item() < 1e-5
