r"""The nano tokenizer: a byte-level BPE with Qwen2's layout, trained on the world's language.

Layout as the Qwen2/Qwen3-VL tokenizer (and the conformance fixture): NFC normaliser, Qwen's split regex,
ByteLevel without prefix space, no unk and no byte fallback; the regular tokens first, then Qwen's 26 added
tokens in upstream order (the first 14 special). The training text is the two official system prompts, the
edit preamble and the world's captions and instructions, so each of their words is one token (as in
Qwen's real vocabulary) and any other text still tokenizes (byte level).

:func:`save_tokenizer` writes both ``tokenizer/`` and ``processor/`` file sets, readable by
``tokenizers.Tokenizer.from_file`` and by transformers' ``AutoTokenizer``. :func:`drop_indices` computes the
number of template tokens up to and including ``<|im_start|>user\n`` — what the official constants 34 and
64 are for the real tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model_runtime.prompts import (
    EDIT_PREFIX,
    EDIT_SYSTEM,
    GENERATE_PREFIX,
    GENERATE_SYSTEM,
    Task,
    build_prompt,
)
from model_runtime.train import world

SPLIT_PATTERN = (  # Qwen2's pre-tokenizer regex
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
CHAT_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['content'] is string %}{{- m['content'] }}{%- else %}{%- for c in m['content'] %}"
    "{%- if c['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif c['type'] == 'text' %}{{- c['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def corpus(n_samples: int = 4000, seed: int = 0) -> Iterator[str]:
    """Training text: the template words (weighted) and the world's captions and instructions."""
    for _ in range(200):
        yield GENERATE_SYSTEM
        yield EDIT_SYSTEM
        yield "system\nuser\nassistant\n"
    rng = np.random.default_rng(seed)
    for _ in range(n_samples):
        scene = world.random_scene(rng)
        yield GENERATE_PREFIX + scene.caption(world.random_order(rng, len(scene.objects)))
        yield EDIT_PREFIX + world.random_edit(rng).instruction


def build_tokenizer(vocab_size: int = 640) -> Any:
    """Train the BPE and append Qwen's added tokens after the regular ones.

    Args:
        vocab_size: Regular tokens at most (256 bytes + merges); training stops earlier when every
            word of the corpus is one token.

    Returns:
        A ``tokenizers.Tokenizer``.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)  # type: ignore[call-arg]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.add_tokens(list(ADDED_TOKENS))
    return tok


def token_ids(tok: Any) -> dict[str, int]:
    """Ids of the added tokens."""
    return {t: int(tok.token_to_id(t)) for t in (*SPECIAL_TOKENS, *ADDED_TOKENS)}


def padded_vocab_size(tok: Any, multiple: int = 64) -> int:
    """Embedding rows: the tokenizer's length rounded up (Qwen pads 151,669 to 151,936)."""
    n = int(tok.get_vocab_size(with_added_tokens=True))
    return (n + multiple - 1) // multiple * multiple


def drop_indices(tok: Any, edit_image_tokens: int | None = None) -> dict[str, int]:
    r"""Template tokens before the user's text, through ``<|im_start|>user\n``, per task.

    With ``edit_image_tokens`` (the merged vision tokens of the edit source, fixed by the folder's VLM image
    size), the edit drop also covers ``<|vision_start|>``, the image tokens and ``<|vision_end|>``: the UNet
    then sees only the instruction and the closing template tokens, which in the causal VLM attend to the
    image *and* the instruction (the image tokens come first and cannot see the instruction; see
    ``docs/nano.md``, "Image tokens in the edit features").

    Raises:
        ValueError: The boundary is not a token boundary of the full template.
    """
    out: dict[str, int] = {}
    tasks: tuple[Task, ...] = ("generate", "edit")
    for task in tasks:
        full = build_prompt(task, "x")
        head = full[: full.index("<|im_start|>user\n") + len("<|im_start|>user\n")]
        head_ids = tok.encode(head).ids
        full_ids = tok.encode(full).ids
        if full_ids[: len(head_ids)] != head_ids:
            raise ValueError(f"`{task}` template prefix does not end on a token boundary")
        out[task] = len(head_ids)
    if edit_image_tokens is not None:
        full_ids = tok.encode(build_prompt("edit", "x")).ids
        start = out["edit"]
        if full_ids[start : start + 3] != [
            tok.token_to_id(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
        ]:
            raise ValueError("the edit template does not start the user's turn with the image")
        out["edit"] = start + edit_image_tokens + 2
    return out


def _added_tokens_decoder(ids: dict[str, int]) -> dict[str, Any]:
    return {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL_TOKENS,
        }
        for t in (*SPECIAL_TOKENS, *ADDED_TOKENS)
    }


def _tokenizer_config(ids: dict[str, int], processor: bool) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(ids),
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if processor:
        cfg["processor_class"] = "Qwen3VLProcessor"
    return dict(sorted(cfg.items()))


def _token_entry(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def save_tokenizer(tok: Any, folder: Path, *, processor: bool = False) -> None:
    """Write the tokenizer file set (``tokenizer.json``, ``vocab.json``, ``merges.txt`` and configs).

    Args:
        tok: The trained tokenizer.
        folder: ``tokenizer/`` or ``processor/`` of a model folder.
        processor: Mark the config as the processor's (``processor_class``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))  # vocab.json + merges.txt
    ids = token_ids(tok)

    def dump(name: str, data: Any) -> None:
        (folder / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    dump("tokenizer_config.json", _tokenizer_config(ids, processor))
    dump(
        "special_tokens_map.json",
        {
            "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
            "eos_token": _token_entry("<|im_end|>"),
            "pad_token": _token_entry("<|endoftext|>"),
        },
    )
    dump("added_tokens.json", dict(sorted(ids.items())))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
