"""Stage ② text: tokenization of the formatted prompt with the folder's own tokenizer.

``tokenizers`` reads ``tokenizer/tokenizer.json`` directly: the same byte-level BPE, NFC normaliser and
added tokens that transformers' ``Qwen2TokenizerFast`` uses, without importing a deep-learning framework,
so the ONNX and QNN backends tokenize exactly like the torch one. The official pipeline tokenizes with
the tokenizer's defaults (no BOS/EOS added for Qwen2) and, in edit mode, lets the processor expand the single
``<|image_pad|>`` to one token per merged vision patch; :meth:`PromptTokenizer.encode` does the same.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model_runtime.errors import ModelLoadError

IMAGE_PAD = "<|image_pad|>"


class PromptTokenizer:
    """Tokenizes official template strings into ``input_ids``.

    Args:
        tokenizer_file: ``tokenizer/tokenizer.json`` of a DreamLite folder.
    """

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as err:  # tokenizers raises its own Exception subclass
            raise ModelLoadError(str(tokenizer_file), f"cannot be read by `tokenizers`: {err}") from err
        self.sha256 = hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
        pad_id = self._tok.token_to_id(IMAGE_PAD)
        if pad_id is None:
            raise ModelLoadError(str(tokenizer_file), f"has no `{IMAGE_PAD}` token")
        self.image_pad_id: int = pad_id

    def encode(self, text: str, num_image_tokens: int = 0) -> NDArray[np.int64]:
        """Token ids of ``text``, with ``<|image_pad|>`` repeated ``num_image_tokens`` times.

        Args:
            text: A template string from :mod:`model_runtime.prompts`.
            num_image_tokens: Merged vision tokens of the edit source (0 in generate mode).

        Returns:
            ``(T,)`` int64 ids.
        """
        if num_image_tokens:
            text = text.replace(IMAGE_PAD, IMAGE_PAD * num_image_tokens, 1)
        ids = self._tok.encode(text, add_special_tokens=True).ids
        return np.asarray(ids, dtype=np.int64)  # (T,) int64
