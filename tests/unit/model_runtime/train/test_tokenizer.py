"""The nano tokenizer: Qwen2 layout, loadable by tokenizers and transformers, official template boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_runtime.prompts import build_prompt
from model_runtime.tokenization import PromptTokenizer
from model_runtime.train import tokenizer_build as tb


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    tok = tb.build_tokenizer()
    folder = tmp_path_factory.mktemp("tok")
    tb.save_tokenizer(tok, folder)
    return tok, folder


def test_added_tokens_follow_the_regular_ones_in_qwen_order(saved: tuple[object, Path]) -> None:
    tok, _ = saved
    ids = tb.token_ids(tok)
    first = ids["<|endoftext|>"]
    expected = [*tb.SPECIAL_TOKENS, *tb.ADDED_TOKENS]
    assert [ids[t] for t in expected] == list(range(first, first + len(expected)))
    assert tok.get_vocab_size(with_added_tokens=True) == first + len(expected)  # type: ignore[attr-defined]
    assert tb.padded_vocab_size(tok) % 64 == 0


def test_drop_idx_ends_after_the_user_turn_opening(saved: tuple[object, Path]) -> None:
    tok, folder = saved
    drop = tb.drop_indices(tok)
    pt = PromptTokenizer(folder / "tokenizer.json")
    gen = pt.encode(build_prompt("generate", "a small red circle on the left on a white background"))
    edit = pt.encode(build_prompt("edit", "make the red circle blue"), 16)
    names = [tok.id_to_token(int(i)) for i in gen]  # type: ignore[attr-defined]
    assert names[drop["generate"] - 3 : drop["generate"] + 1] == ["<|im_start|>", "user", "Ċ", "[Generate"]
    assert tok.id_to_token(int(edit[drop["edit"]])) == "<|vision_start|>"  # type: ignore[attr-defined]
    # the world's words are single tokens
    words = tok.encode(" small red circle on the left").tokens  # type: ignore[attr-defined]
    assert len(words) == 6


def test_transformers_autotokenizer_matches_tokenizers(saved: tuple[object, Path]) -> None:
    from transformers import AutoTokenizer

    _, folder = saved
    auto = AutoTokenizer.from_pretrained(str(folder))
    pt = PromptTokenizer(folder / "tokenizer.json")
    for text in (
        build_prompt("generate", "a large blue star at the top on a gray background"),
        build_prompt("edit", "turn the green square into a triangle").replace(
            "<|image_pad|>", "<|image_pad|>" * 4
        ),
        build_prompt("generate", "a cute dog wearing sunglasses, 4k"),
    ):
        assert auto(text)["input_ids"] == pt.encode(text).tolist()
