"""torch backend: pre-final-norm text features, safe from several threads, with an optional shared prefix."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from model_runtime.backends.torch_backend import prefinal_text_states
from model_runtime.prompts import build_prompt
from model_runtime.tokenization import PromptTokenizer
from tests.conftest import TINY_MODEL


def test_text_states_from_concurrent_threads_equal_the_serial_ones() -> None:
    from transformers import Qwen3VLForConditionalGeneration

    te = Qwen3VLForConditionalGeneration.from_pretrained(TINY_MODEL / "text_encoder").eval()
    tok = PromptTokenizer(TINY_MODEL / "tokenizer" / "tokenizer.json")
    prompts = [f"a {c} circle on the left" for c in ("red", "blue", "green", "purple")]
    ids = [torch.from_numpy(tok.encode(build_prompt("generate", p)))[None] for p in prompts]

    def encode(i: int) -> torch.Tensor:
        with torch.inference_mode():
            return prefinal_text_states(te, ids[i], torch.ones_like(ids[i]))

    serial = [encode(i) for i in range(len(ids))]
    # Several apps on one runtime, or a job still running while another app warms up: the norm hook and
    # the M-RoPE cache are state on the shared module.
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(encode, [i % len(ids) for i in range(32)]))
    for k, got in enumerate(concurrent):
        assert torch.equal(got, serial[k % len(ids)]), k


def _batch(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Right-padded ``(B, T)`` ids and mask of generate prompts, and each row's length."""
    tok = PromptTokenizer(TINY_MODEL / "tokenizer" / "tokenizer.json")
    rows = [tok.encode(build_prompt("generate", p)).tolist() for p in prompts]
    T = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), T), dtype=torch.int64)
    mask = torch.zeros((len(rows), T), dtype=torch.int64)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return ids, mask, [len(r) for r in rows]


def test_a_shared_prefix_encoded_once_gives_the_batch_s_states_and_gradients() -> None:
    from transformers import Qwen3VLForConditionalGeneration

    te = Qwen3VLForConditionalGeneration.from_pretrained(TINY_MODEL / "text_encoder").float().train()
    prompts = ["a red circle on the left", "two blue stars", "a large green square at the top"]
    ids, mask, lengths = _batch(prompts)
    prefix = 30  # inside the generate template every row shares
    assert torch.equal(ids[:, :prefix], ids[:1, :prefix].expand(3, -1))
    dim = te.config.text_config.hidden_size
    weights = torch.randn(*ids.shape, dim, generator=torch.Generator().manual_seed(0))  # (B, T, D)
    got: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
    for shared in (0, prefix):
        te.zero_grad()
        states = prefinal_text_states(te, ids, mask, shared_prefix=shared)  # (B, T, D)
        (states * weights * mask[..., None]).sum().backward()
        got.append((states.detach(), [p.grad.clone() for p in te.parameters() if p.grad is not None]))
    (plain, plain_grads), (shared_states, shared_grads) = got
    for b, n in enumerate(lengths):  # padding rows are never read
        torch.testing.assert_close(shared_states[b, :n], plain[b, :n], rtol=1e-5, atol=1e-5)
    assert len(shared_grads) == len(plain_grads) > 0
    for g_shared, g_plain in zip(shared_grads, plain_grads, strict=True):  # float32 rounding apart
        assert float((g_shared - g_plain).norm()) <= 1e-5 * float(g_plain.norm()) + 1e-9


def test_a_prefix_that_is_not_shared_is_refused() -> None:
    import pytest
    from transformers import Qwen3VLForConditionalGeneration

    te = Qwen3VLForConditionalGeneration.from_pretrained(TINY_MODEL / "text_encoder").eval()
    ids, mask, lengths = _batch(["a red circle", "a blue star on the right"])
    with pytest.raises(ValueError, match="shared by every row"):
        prefinal_text_states(te, ids, mask, shared_prefix=min(lengths) - 1)  # the prompts differ there
    with pytest.raises(ValueError, match="one after it"):
        prefinal_text_states(te, ids, mask, shared_prefix=min(lengths))  # row 0 has nothing after it
