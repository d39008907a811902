"""torch backend: the pre-final-norm text features are safe to compute from several threads at once."""

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
