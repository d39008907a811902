"""Text-encoder inputs of the exported Qwen3-VL graphs: M-RoPE position ids and padding, in numpy only.

Used by the bundle's ONNX text encoder (:class:`model_runtime.bundle.OnnxTextEncoder`, export stage
"text encoder ONNX", :mod:`model_runtime.export.text_encoder`). The graphs take ``position_ids`` as an
input, so the rule lives here, written to be ported line by line into a phone app (Kotlin, Swift, C++):
plain integer loops, no framework.

Qwen3-VL's multimodal rotary embedding (M-RoPE) gives every token three position indices — temporal,
height, width. For a sequence of text tokens and images (each image a contiguous run of
``<|image_pad|>`` tokens, in order):

* a text token takes the next position ``p`` on all three axes, then ``p += 1``;
* an image with merged grid ``(t, h, w)`` (``image_grid_thw`` divided by the spatial merge size on h
  and w) starting at ``p`` covers ``t·h·w`` tokens in row-major (t, h, w) order; the token at
  ``(i, j, k)`` gets ``(p + i, p + j, p + k)``; afterwards ``p += max(h, w)`` (the next text token
  continues at the largest spatial index + 1; ``t`` does not advance ``p`` — transformers'
  ``Qwen3VLModel.get_rope_index`` rule, which the tests check this against).

Generate mode has no image, so the ids are ``0 … n−1`` on all three axes. Right padding (for the static
graph length) continues the text rule; it never influences real tokens, because the model is causal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from model_runtime.errors import InvalidInputError


def mrope_position_ids(
    input_ids: NDArray[np.int64],
    image_token_id: int,
    image_grid_thw: NDArray[np.int64] | Sequence[Sequence[int]] | None = None,
    spatial_merge_size: int = 2,
    length: int | None = None,
) -> NDArray[np.int64]:
    """Qwen3-VL M-RoPE position ids for one prompt, optionally right-padded to ``length``.

    Args:
        input_ids: ``(T,)`` int64 token ids of one prompt (no padding).
        image_token_id: Id of ``<|image_pad|>``.
        image_grid_thw: ``(n_images, 3)`` patch grids (the processor's ``image_grid_thw``), one per run
            of image tokens, in order; None or empty for a text-only prompt.
        spatial_merge_size: The vision tower's spatial merge (2).
        length: Pad to this many positions (the graph's static length); None = ``T``.

    Returns:
        ``(3, 1, length)`` int64: rows temporal, height, width; batch 1.

    Raises:
        InvalidInputError: The image tokens do not match the grids, or ``length`` < ``T``.
    """
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)  # (T,)
    total = int(ids.shape[0]) if length is None else int(length)
    if total < ids.shape[0]:
        raise InvalidInputError(
            "prompt",
            "has more tokens than the text encoder graph takes.",
            allowed=f"at most {total}",
            given=f"{ids.shape[0]} tokens",
        )
    grids = [] if image_grid_thw is None else [tuple(int(v) for v in g) for g in image_grid_thw]
    out = np.zeros((3, 1, total), dtype=np.int64)  # (3, 1, L) int64
    pos = 0  # next free position
    image = 0  # images consumed
    i = 0
    n = int(ids.shape[0])
    while i < n:
        if ids[i] != image_token_id:
            out[:, 0, i] = pos
            pos += 1
            i += 1
            continue
        if image >= len(grids):
            raise InvalidInputError(
                "image", "tokens appear in the prompt without a matching image grid.", given=f"token {i}"
            )
        gt, gh, gw = grids[image]
        ht, hh, hw = gt, gh // spatial_merge_size, gw // spatial_merge_size
        count = ht * hh * hw
        run = i
        while run < n and ids[run] == image_token_id:
            run += 1
        if run - i != count:
            raise InvalidInputError(
                "image",
                "token run does not match its grid.",
                allowed=f"{count} tokens for grid {gt}x{gh}x{gw} / merge {spatial_merge_size}",
                given=f"{run - i} tokens",
            )
        for a in range(ht):
            for b in range(hh):
                for c in range(hw):
                    k = i + (a * hh + b) * hw + c
                    out[0, 0, k] = pos + a
                    out[1, 0, k] = pos + b
                    out[2, 0, k] = pos + c
        pos += max(hh, hw)
        image += 1
        i = run
    for k in range(n, total):  # right padding: text positions, invisible to real tokens (causal)
        out[:, 0, k] = pos
        pos += 1
    return out


def pad_right(
    input_ids: NDArray[np.int64], length: int, pad_id: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(1, length)`` ids right-padded with ``pad_id`` and the ``(1, length)`` attention mask (1 = token).

    Raises:
        InvalidInputError: More than ``length`` tokens (names the prompt).
    """
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)  # (T,)
    if ids.shape[0] > length:
        raise InvalidInputError(
            "prompt",
            "is too long for this bundle's text encoder graph (template and image tokens included).",
            allowed=f"at most {length} tokens",
            given=f"{ids.shape[0]} tokens",
        )
    padded = np.full((1, length), pad_id, dtype=np.int64)  # (1, L) int64
    padded[0, : ids.shape[0]] = ids
    mask = np.zeros((1, length), dtype=np.int64)  # (1, L) int64, 1 = real token
    mask[0, : ids.shape[0]] = 1
    return padded, mask
