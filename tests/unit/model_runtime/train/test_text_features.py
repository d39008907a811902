"""Training's text stage: the fast path (shared template prefix, patch embedding as a product) on the shipped
nano model gives the plain path's features and gradients to float32 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.train import world
from model_runtime.train.text_features import (
    TextFeaturizer,
    TextRequest,
    linear_patch_embed,
    shared_prefix_length,
)

NANO = Path(__file__).resolve().parents[4] / "model_runtime" / "assets" / "dreamlite-nano"


def _encoder() -> torch.nn.Module:
    from transformers import Qwen3VLForConditionalGeneration

    encoder: torch.nn.Module = Qwen3VLForConditionalGeneration.from_pretrained(str(NANO / "text_encoder"))
    return encoder.float().train()


def _requests(n: int, seed: int) -> list[TextRequest]:
    """Edit requests, captions and both unconditional templates, in a mixed order."""
    rng = np.random.default_rng(seed)
    edits = [world.train_edit(rng) for _ in range(n)]
    reqs = [TextRequest("edit", e.instruction, world.render(e.source)) for e in edits]
    reqs += [TextRequest("generate", e.target.caption()) for e in edits]
    reqs += [TextRequest("generate", None), TextRequest("edit", None, world.render(edits[0].target))]
    order = rng.permutation(len(reqs))
    return [reqs[i] for i in order]


def _rows_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Every row (last axis) within 1e-5 of its norm: the states reach ~3000 on a few channels."""
    err = (got - want).norm(dim=-1)
    assert bool((err <= 1e-5 * want.norm(dim=-1) + 1e-6).all()), float((err / want.norm(dim=-1)).max())


def test_the_shared_prefix_stops_at_the_first_difference_an_image_token_or_the_shortest_row() -> None:
    assert shared_prefix_length([(1, 2, 3, 4), (1, 2, 5, 4)], image_pad_id=9) == 2
    assert shared_prefix_length([(1, 2, 9, 9, 4), (1, 2, 9, 9, 5)], image_pad_id=9) == 2
    assert shared_prefix_length([(1, 2, 3), (1, 2, 3, 4, 5)], image_pad_id=9) == 2  # one id left in row 0
    assert shared_prefix_length([(1, 2, 3, 4)], image_pad_id=9) == 0  # nothing to share with one row


def test_fast_features_images_and_gradients_equal_the_plain_ones() -> None:
    encoder = _encoder()
    requests = _requests(6, seed=3)
    results = []
    for fast in (False, True):
        encoder.zero_grad()
        fz = TextFeaturizer.for_folder(NANO, fast=fast)
        feats, mask, images = fz.encode_mixed_images(encoder, requests)  # (B, L, D), (B, L), (B, N, D)
        w = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))  # (B, L, D)
        ((feats * w).sum() + images.square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        results.append((feats.detach(), mask, images.detach(), grads))
    (f0, m0, i0, g0), (f1, m1, i1, g1) = results
    assert torch.equal(m0, m1)
    _rows_close(f1, f0)
    _rows_close(i1, i0)
    assert g0.keys() == g1.keys()
    assert any(n.startswith("model.visual.patch_embed") for n in g1)  # the product trains the conv's weights
    for name, g in g0.items():
        assert float((g1[name] - g).norm()) <= 1e-5 * float(g.norm()) + 1e-9, name


def test_the_patch_embedding_product_is_the_convolution_and_is_removed_after_the_block() -> None:
    encoder = _encoder()
    embed = encoder.model.visual.patch_embed  # type: ignore[union-attr]
    patches = torch.randn(64, embed.proj.weight[0].numel(), generator=torch.Generator().manual_seed(2))
    conv = embed(patches)  # (64, E)
    with linear_patch_embed(encoder):
        product = embed(patches)  # (64, E)
    assert "forward" not in vars(embed)
    _rows_close(product, conv)


@pytest.mark.parametrize("fast", [False, True])
def test_one_request_encodes_the_same_either_way(fast: bool) -> None:
    encoder = _encoder().eval()
    req = _requests(1, seed=4)[:1]
    with torch.no_grad():
        plain, _ = TextFeaturizer.for_folder(NANO)(encoder, req)
        got, _ = TextFeaturizer.for_folder(NANO, fast=fast)(encoder, req)
    _rows_close(got, plain)
