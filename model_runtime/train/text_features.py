"""Text features for training, computed exactly as the runtime computes them at inference.

The template strings come from :mod:`model_runtime.prompts`, the ids from
:class:`model_runtime.tokenization.PromptTokenizer`, the VLM pixels from :mod:`model_runtime.preprocess` and
the pre-final-norm hidden states from :func:`model_runtime.backends.torch_backend.prefinal_text_states`; the
first ``drop_idx`` tokens are dropped and the rest zero-padded with a mask, as in the pipeline. The only
difference is batching: prompts are right-padded to one length and encoded together (the encoder is
causal, so real tokens never see the padding; :func:`tests` check that the result equals the pipeline's
one-prompt-at-a-time features).

``fast`` (the recipe's ``fast_text``) computes the same features in fewer operations: the template prefix
that every request of a batch shares (half the tokens of a training batch) is encoded once and reached
through the key/value cache, and the vision tower's patch embedding, a ``Conv3d`` whose stride is its kernel,
runs as the matrix product it is. The results agree with the plain path to float32 rounding (~1e-7), not bit
for bit, so a recipe that sets it makes other weights than one that does not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from model_runtime.backends.torch_backend import prefinal_text_states
from model_runtime.preprocess import num_image_tokens, resize_lanczos, vlm_inputs
from model_runtime.prompts import Task, build_prompt, build_unconditional_prompt
from model_runtime.tokenization import PromptTokenizer


def pad_cat(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (features, mask) pairs along the batch, zero-padding the token axis."""
    L = max(f.shape[1] for f, _ in parts)
    feats = torch.cat([F.pad(f, (0, 0, 0, L - f.shape[1])) for f, _ in parts])  # (B, L, D)
    masks = torch.cat([F.pad(m, (0, L - m.shape[1])) for _, m in parts])  # (B, L)
    return feats, masks


def shared_prefix_length(rows: Sequence[Sequence[int]], image_pad_id: int) -> int:
    """Leading ids every row shares, before any image token and with one id left in the shortest row."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and rows[0][n] != image_pad_id and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


@contextmanager
def linear_patch_embed(text_encoder: Any) -> Iterator[None]:
    """Within the block, the vision tower's patch embedding runs as a matrix product.

    ``Qwen3VLVisionPatchEmbed`` is a ``Conv3d`` whose stride equals its kernel over patches that the
    processor has already flattened in the kernel's (channel, time, row, column) order, so it is
    ``patches @ weight.view(E, -1).T + bias``. On 2 CPU cores the convolution's forward and backward took
    34 ms for a training batch of 32 sources (2048 patches), the product 6 ms (measured). The weights are
    the module's own.
    """
    embed = text_encoder.model.visual.patch_embed
    conv = embed.proj

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        w = conv.weight  # (E, C, t, p, p)
        x = hidden_states.reshape(-1, w[0].numel()).to(w.dtype)  # (N, C·t·p·p)
        return F.linear(x, w.reshape(w.shape[0], -1), conv.bias)  # (N, E)

    embed.forward = forward
    try:
        yield
    finally:
        del embed.forward


@dataclass(frozen=True, slots=True)
class TextRequest:
    """One prompt to encode.

    Attributes:
        task: ``generate`` or ``edit``.
        prompt: The user's words; None for the unconditional (guidance) template.
        image: Edit source ``(H, W, 3)`` uint8 (edit only).
    """

    task: Task
    prompt: str | None
    image: NDArray[np.uint8] | None = None


class TextFeaturizer:
    """Batched, differentiable version of the pipeline's text stage.

    Args:
        tokenizer_file: ``tokenizer.json`` of the model.
        processor_config: ``processor/preprocessor_config.json`` contents.
        drop_idx: Template tokens dropped per task.
        vlm_size: (W, H) of the edit source given to the vision tower.
        pad_id: Id used for padding the batch (never attended by real tokens).
        fast: Share the batch's template prefix and run the patch embedding as a product (module
            docstring); the same features to float32 rounding.
    """

    def __init__(
        self,
        tokenizer_file: Path,
        processor_config: dict[str, Any],
        drop_idx: dict[str, int],
        vlm_size: tuple[int, int],
        pad_id: int,
        fast: bool = False,
    ) -> None:
        self.tokenizer_file = tokenizer_file
        self.fast = fast
        self.tokenizer = PromptTokenizer(tokenizer_file)
        self.processor_config = processor_config
        self.drop_idx = dict(drop_idx)
        self.vlm_size = vlm_size
        self.pad_id = pad_id
        self.merge = int(processor_config.get("merge_size", 2))
        self._encode = lru_cache(maxsize=65536)(self._encode_uncached)

    @classmethod
    def for_folder(cls, folder: Path, fast: bool = False) -> TextFeaturizer:
        """The text stage of a written model folder (its tokenizer, processor, ``drop_idx`` and VLM size)."""
        import json

        from tokenizers import Tokenizer

        config = json.loads((folder / "dreamlite.json").read_text(encoding="utf-8"))
        processor = json.loads((folder / "processor" / "preprocessor_config.json").read_text("utf-8"))
        tokenizer_file = folder / "tokenizer" / "tokenizer.json"
        pad_id = Tokenizer.from_file(str(tokenizer_file)).token_to_id("<|endoftext|>")
        if pad_id is None:
            raise ValueError(f"{tokenizer_file} has no <|endoftext|> token")
        w, h = config["vlm_image_size"]
        return cls(tokenizer_file, processor, dict(config["drop_idx"]), (int(w), int(h)), int(pad_id), fast)

    def _encode_uncached(self, template: str, n_image: int) -> tuple[int, ...]:
        return tuple(int(i) for i in self.tokenizer.encode(template, n_image))

    def encode_mixed(
        self, text_encoder: Any, requests: Sequence[TextRequest]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode requests of both tasks (one encoder call per task), returned in request order.

        Returns:
            ``(B, L, D)`` features and ``(B, L)`` int64 mask, zero-padded to the longest row.
        """
        feats, mask, _ = self.encode_mixed_images(text_encoder, requests)
        return feats, mask

    def encode_mixed_images(
        self, text_encoder: Any, requests: Sequence[TextRequest]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`encode_mixed`, and the states of every request's image tokens.

        The image states are there whether or not the drop keeps them in the features (the ``read``
        stage's per-token head reads them; ``RecipeConfig.edit_image_features``).

        Returns:
            ``(B, L, D)`` features, ``(B, L)`` int64 mask and ``(B, N, D)`` pre-final-norm states of the
            ``<|image_pad|>`` tokens (N: the edit rows' image tokens; zeros for generate rows).
        """
        order: list[int] = []
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for task in ("generate", "edit"):
            rows = [i for i, r in enumerate(requests) if r.task == task]
            if rows:
                parts.append(self.encode_task(text_encoder, [requests[i] for i in rows]))
                order.extend(rows)
        L = max(f.shape[1] for f, _, _ in parts)
        N = max(im.shape[1] for _, _, im in parts)
        feats = torch.cat(
            [F.pad(f, (0, 0, 0, L - f.shape[1])) for f, _, _ in parts]
        )  # (B, L, D) grouped by task
        mask = torch.cat([F.pad(m, (0, L - m.shape[1])) for _, m, _ in parts])  # (B, L)
        images = torch.cat([F.pad(im, (0, 0, 0, N - im.shape[1])) for _, _, im in parts])  # (B, N, D)
        inverse = torch.tensor(np.argsort(order), dtype=torch.int64)
        return feats[inverse], mask[inverse], images[inverse]

    def keeps_image_tokens(self) -> bool:
        """Whether the edit features include the image tokens (the official drop) or start after them."""
        return self.image_pad_id() in self.kept_ids(
            TextRequest("edit", "x", np.zeros((self.vlm_size[1], self.vlm_size[0], 3), dtype=np.uint8))
        )

    def image_pad_id(self) -> int:
        """Id of ``<|image_pad|>``."""
        return self.tokenizer.image_pad_id

    def kept_ids(self, req: TextRequest) -> tuple[int, ...]:
        """Token ids of a request that survive the drop (the rows of its features)."""
        n_image = 0
        if req.task == "edit":
            w, h = self.vlm_size
            grid = np.asarray([[1, h // 16, w // 16]], dtype=np.int64)
            n_image = num_image_tokens(grid, self.merge)
        return self._encode(self.template(req), n_image)[self.drop_idx[req.task] :]

    def template(self, req: TextRequest) -> str:
        """The template string of a request."""
        if req.prompt is None:
            return build_unconditional_prompt(req.task)
        return build_prompt(req.task, req.prompt)

    def __call__(
        self, text_encoder: Any, requests: Sequence[TextRequest], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of requests of one task.

        Args:
            text_encoder: ``Qwen3VLForConditionalGeneration`` (train or eval mode).
            requests: Requests that all share one task.
            device: Device of the encoder.

        Returns:
            ``(B, L, D)`` features (zero-padded after the drop) and ``(B, L)`` int64 mask.
        """
        feats, mask, _ = self.encode_task(text_encoder, requests, device)
        return feats, mask

    def encode_task(
        self, text_encoder: Any, requests: Sequence[TextRequest], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`__call__`, and ``(B, N, D)`` states of the image tokens (N = 0 for generate)."""
        task = requests[0].task
        if any(r.task != task for r in requests):
            raise ValueError("`requests` must share one task")
        device = device or torch.device("cpu")
        rows: list[tuple[int, ...]] = []
        pixels: list[NDArray[np.float32]] = []
        grids: list[NDArray[np.int64]] = []
        for req in requests:
            n_image = 0
            if task == "edit":
                if req.image is None:
                    raise ValueError("edit requests need `image`")
                pv, grid = vlm_inputs(resize_lanczos(req.image, self.vlm_size), self.processor_config)
                pixels.append(pv)
                grids.append(grid)
                n_image = num_image_tokens(grid, self.merge)
            rows.append(self._encode(self.template(req), n_image))
        lengths = [len(r) for r in rows]
        T = max(lengths)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.int64)  # (B, T) int64
        attn = torch.zeros((len(rows), T), dtype=torch.int64)  # (B, T) int64
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
            attn[b, : len(r)] = 1
        pixel_values = grid_thw = None
        if pixels:
            pixel_values = torch.from_numpy(np.concatenate(pixels)).to(device)  # (P, K) float32
            grid_thw = torch.from_numpy(np.concatenate(grids)).to(device)  # (B, 3) int64
        prefix = shared_prefix_length(rows, self.image_pad_id()) if self.fast else 0
        patches = linear_patch_embed(text_encoder) if self.fast and pixels else nullcontext()
        with patches:
            hidden = prefinal_text_states(
                text_encoder, ids.to(device), attn.to(device), pixel_values, grid_thw, prefix
            )  # (B, T, D)
        drop = self.drop_idx[task]
        L = max(lengths) - drop
        feats = hidden.new_zeros((len(rows), L, hidden.shape[-1]))  # (B, L, D) zero padding
        mask = torch.zeros((len(rows), L), dtype=torch.int64, device=hidden.device)  # (B, L) 1 = real
        for b, n in enumerate(lengths):
            feats[b, : n - drop] = hidden[b, drop:n]
            mask[b, : n - drop] = 1
        pads = ids == self.image_pad_id()  # (B, T) bool, the same count in every edit row
        n_img = int(pads[0].sum())
        images = hidden[pads.to(hidden.device)].view(len(rows), n_img, hidden.shape[-1])  # (B, N, D)
        return feats, mask, images
