"""Stage ② text: templates and tokenization agree with the official strings and transformers' tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from model_runtime.prompts import build_prompt, build_unconditional_prompt
from model_runtime.tokenization import PromptTokenizer
from tests.conftest import CASES, TINY_MODEL


def test_templates_are_the_official_strings() -> None:
    for case in ("gen_256", "gen_320x192"):
        req = json.loads((CASES / case / "request.json").read_text())
        assert build_prompt("generate", req["call"]["prompt"]) == req["derived"]["text_encoder_input_string"]
    req = json.loads((CASES / "edit_1024" / "request.json").read_text())
    key = "text_encoder_input_string_before_image_token_expansion"
    assert build_prompt("edit", req["call"]["prompt"]) == req["derived"][key]


def test_unconditional_templates_have_no_user_words() -> None:
    assert "[Generate]" not in build_unconditional_prompt("generate")
    assert "user\n<|im_end|>" in build_unconditional_prompt("generate")
    assert "<|image_pad|>" in build_unconditional_prompt("edit")


@pytest.mark.parametrize(
    "prompt",
    [
        "a red apple",
        "héllo wörld café",
        "cafe\u0301 (NFC)",
        "  spaces  and\ttabs\n",
        "emoji 🍎🚀",
        "数字 123 ,.;",
    ],
)
def test_ids_match_transformers_tokenizer(prompt: str) -> None:
    ours = PromptTokenizer(TINY_MODEL / "tokenizer" / "tokenizer.json")
    theirs = AutoTokenizer.from_pretrained(TINY_MODEL / "tokenizer")
    text = build_prompt("generate", prompt)
    assert ours.encode(text).tolist() == theirs(text)["input_ids"]


def test_edit_ids_expand_the_image_token() -> None:
    ours = PromptTokenizer(TINY_MODEL / "tokenizer" / "tokenizer.json")
    req = json.loads((CASES / "edit_1024" / "request.json").read_text())
    ids = ours.encode(build_prompt("edit", req["call"]["prompt"]), num_image_tokens=64)
    np.testing.assert_array_equal(ids, np.load(CASES / "edit_1024" / "input_ids.npy")[0])
    assert int((ids == ours.image_pad_id).sum()) == 64
