"""Export stage "text encoder ONNX": Qwen3-VL → two static graphs a phone-like runtime runs without torch.

The UNet is conditioned on the **last decoder layer's output before the final RMSNorm** (what
:func:`model_runtime.backends.torch_backend.prefinal_text_states` returns). This stage traces that path
into two batch-1, static-shape ONNX graphs (TorchScript exporter, ``dynamo=False``, opset 17, then ORT's
basic offline optimiser, as :mod:`.onnx_export` does for the UNet):

* ``text_encoder_onnx/vision.fp32.onnx`` — the vision tower for the folder's fixed VLM image size:
  ``pixel_values [P, K]`` (the processor's patches) → ``image_embeds [N, D]`` (merged tokens) and
  ``deepstack_embeds [S, N, D]`` (one row per deepstack layer). Everything that depends on
  ``image_grid_thw`` (learned position-table interpolation, 2-D rotary tables, the single attention
  window) is computed at export time for that grid and baked in as constants.
* ``text_encoder_onnx/text.fp32.onnx`` — the language model without its final norm:
  ``input_ids [1, T]`` int64 (right-padded), ``attention_mask [1, T]`` int64 (1 = token),
  ``position_ids [3, 1, T]`` int64 (M-RoPE, computed outside the graph by
  :func:`model_runtime.text_positions.mrope_position_ids`), ``image_mask [1, T]`` int64 (1 on image
  tokens of an edit prompt, else 0), ``image_embeds [N, D]`` and ``deepstack_embeds [S, N, D]`` float32
  (the vision graph's outputs; zeros in generate mode) → ``hidden_states [1, T, D]`` float32.
  Image tokens take ``image_embeds`` in order (the k-th image token gets row k), and after decoder layer
  ``i < S`` the image-token states get ``deepstack_embeds[i]`` added — transformers' masked scatter and
  deepstack injection, written with CumSum/Gather/Where so the shapes stay static.

``T`` is ``--text-max-tokens`` (default: the bundle's ``seq_len`` + the larger ``drop_idx``, i.e. the
longest prompt the UNet graph can take). The model is causal, so a real token never sees the right
padding: the real-token outputs equal an unpadded run (tested). The stage measures parity against the
torch encoder on held-out prompts and writes everything the runtime needs to ``manifest.text.encoder``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from model_runtime.bundle import TEXT_ENCODER_SESSION as SESSION
from model_runtime.errors import ModelLoadError
from model_runtime.folder import ModelFolder, hash_file

logger = logging.getLogger(__name__)

TEXT_GRAPH = "text_encoder_onnx/text.fp32.onnx"
VISION_GRAPH = "text_encoder_onnx/vision.fp32.onnx"
TEXT_INPUTS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "image_mask",
    "image_embeds",
    "deepstack_embeds",
)
TEXT_OUTPUTS = ("hidden_states",)
VISION_INPUTS = ("pixel_values",)
VISION_OUTPUTS = ("image_embeds", "deepstack_embeds")
PARITY_PROMPTS: tuple[tuple[Literal["generate", "edit"], str], ...] = (
    ("generate", "a cup of coffee on a wooden table, morning light"),
    ("generate", "a lighthouse"),
    ("edit", "make it night time"),
)


@dataclass(frozen=True, slots=True)
class TextEncoderLayout:
    """The static shapes and ids of the exported text encoder (all written to the manifest).

    Attributes:
        max_tokens: ``T``, the text graph's length (template and image tokens included).
        hidden: ``D``, the language model's hidden size.
        pad_token_id: Id written into padded positions (``<|endoftext|>``; any id works, causal model).
        image_token_id: Id of ``<|image_pad|>``.
        spatial_merge_size: Vision merge (2): ``N = t·h·w / merge²``.
        vlm_image_size: (W, H) the pipeline resizes edit sources to before the processor.
        image_grid_thw: The processor's patch grid for that size.
        patches: ``P`` rows of ``pixel_values``.
        patch_dim: ``K`` = 3 · temporal patch · patch².
        image_tokens: ``N`` merged tokens.
        deepstack_layers: ``S`` deepstack feature sets (added after LM layers ``0 … S−1``).
    """

    max_tokens: int
    hidden: int
    pad_token_id: int
    image_token_id: int
    spatial_merge_size: int
    vlm_image_size: tuple[int, int]
    image_grid_thw: tuple[int, int, int]
    patches: int
    patch_dim: int
    image_tokens: int
    deepstack_layers: int


def mrope_axis_table(head_dim: int, mrope_section: list[int]) -> list[int]:
    """Which position axis (0 = t, 1 = h, 2 = w) drives each of the ``head_dim / 2`` rotary frequencies.

    Qwen3-VL interleaves the axes: frequency ``i`` follows h when ``i % 3 == 1`` and ``i < 3·section[1]``,
    w when ``i % 3 == 2`` and ``i < 3·section[2]``, and t otherwise.
    """
    table = []
    for i in range(head_dim // 2):
        if i % 3 == 1 and i < 3 * mrope_section[1]:
            table.append(1)
        elif i % 3 == 2 and i < 3 * mrope_section[2]:
            table.append(2)
        else:
            table.append(0)
    return table


# ---------------------------------------------------------------------------------------------- wrappers
class VisionGraph(torch.nn.Module):
    """Export-only wrapper: the Qwen3-VL vision tower for one fixed grid.

    The grid-dependent inputs of the tower (interpolated learned position embeddings, the 2-D rotary
    cos/sin tables, the one-window ``cu_seqlens``) are computed once here with transformers' own helpers
    and stored as buffers, so the traced graph is pure tensor math on ``pixel_values``.
    """

    pos_embeds: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    cu_seqlens: torch.Tensor

    def __init__(self, visual: Any, grid_thw: torch.Tensor) -> None:
        super().__init__()
        from transformers.vision_utils import (
            get_vision_interpolation_indices_and_weights,
            get_vision_position_ids,
        )

        self.visual = visual
        merge = int(visual.spatial_merge_size)
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid_thw,
            num_grid_per_side=int(visual.num_grid_per_side),
            mode=str(visual.interpolation_mode),
            align_corners=bool(visual.interpolation_align_corners),
            spatial_merge_size=merge,
        )
        with torch.no_grad():
            pos = (visual.pos_embed(indices) * weights[:, :, None]).sum(1)  # (P, Dv) float32
            position_ids = get_vision_position_ids(grid_thw, merge)  # (P, 2) int64
            cos, sin = visual.rotary_pos_emb(pos, position_ids)  # (P, head_dim) each
        patches = int(grid_thw.prod())
        self.register_buffer("pos_embeds", pos.detach().clone(), persistent=False)
        self.register_buffer("rope_cos", cos.detach().clone(), persistent=False)
        self.register_buffer("rope_sin", sin.detach().clone(), persistent=False)
        self.register_buffer("cu_seqlens", torch.tensor([0, patches], dtype=torch.int32), persistent=False)
        self.deepstack_indexes = [int(i) for i in visual.deepstack_visual_indexes]

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, K)`` patches → ``(N, D)`` merged embeddings and ``(S, N, D)`` deepstack features."""
        visual = self.visual
        hidden = visual.patch_embed(pixel_values) + self.pos_embeds  # (P, Dv)
        deepstack = []
        for index, block in enumerate(visual.blocks):
            hidden = block(
                hidden, cu_seqlens=self.cu_seqlens, position_embeddings=(self.rope_cos, self.rope_sin)
            )  # (P, Dv)
            if index in self.deepstack_indexes:
                merger = visual.deepstack_merger_list[self.deepstack_indexes.index(index)]
                deepstack.append(merger(hidden))  # (N, D)
        merged = visual.merger(hidden)  # (N, D)
        return merged, torch.stack(deepstack)  # (N, D), (S, N, D)


class TextGraph(torch.nn.Module):
    """Export-only wrapper: Qwen3-VL's language model up to (not including) the final RMSNorm.

    Takes the M-RoPE ``position_ids`` as an input (the rotary tables are built in the graph from them),
    a padding mask turned into a causal additive bias, and the vision features with the image-token mask.
    """

    inv_freq: torch.Tensor
    axes: torch.Tensor
    causal: torch.Tensor

    def __init__(
        self, language_model: Any, max_tokens: int, image_tokens: int, deepstack_layers: int
    ) -> None:
        super().__init__()
        self.lm = language_model
        rotary = language_model.rotary_emb
        rope = dict(language_model.config.rope_parameters or {})
        if rope.get("rope_type", "default") != "default" or not rope.get("mrope_interleaved", True):
            raise ModelLoadError("text_encoder/config.json", f"unsupported rope parameters {rope} for export")
        inv_freq = rotary.inv_freq.detach().to(torch.float32).clone()  # (F,) F = head_dim / 2
        section = list(rotary.mrope_section)
        axes = mrope_axis_table(2 * int(inv_freq.shape[0]), section)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("axes", torch.tensor(axes, dtype=torch.int64), persistent=False)
        self.register_buffer(
            "causal", torch.tril(torch.ones(max_tokens, max_tokens, dtype=torch.bool)), persistent=False
        )
        self.scaling = float(rotary.attention_scaling)
        self.image_tokens = image_tokens
        self.deepstack_layers = deepstack_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        image_mask: torch.Tensor,
        image_embeds: torch.Tensor,
        deepstack_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """Pre-final-norm states ``(1, T, D)`` of one padded prompt.

        Shapes: ids/mask/image_mask ``(1, T)`` int64, positions ``(3, 1, T)`` int64, ``image_embeds``
        ``(N, D)``, ``deepstack_embeds`` ``(S, N, D)`` float32.
        """
        hidden = self.lm.embed_tokens(input_ids)  # (1, T, D)
        is_image = (image_mask > 0).unsqueeze(-1)  # (1, T, 1) bool
        slot = (torch.cumsum(image_mask.clamp(0, 1), dim=1) - 1).clamp(0, self.image_tokens - 1)  # (1, T)
        slot = slot.reshape(-1)  # (T,) k-th image token → row k
        hidden = torch.where(is_image, image_embeds.index_select(0, slot).unsqueeze(0), hidden)  # (1, T, D)

        freqs = position_ids.to(torch.float32).index_select(0, self.axes)  # (F, 1, T): axis per frequency
        freqs = freqs.permute(1, 2, 0) * self.inv_freq  # (1, T, F)
        angles = torch.cat((freqs, freqs), dim=-1)  # (1, T, head_dim)
        cos = angles.cos() * self.scaling
        sin = angles.sin() * self.scaling

        keep = self.causal.unsqueeze(0).unsqueeze(0) & (attention_mask > 0)[:, None, None, :]  # (1, 1, T, T)
        bias = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)

        for index, layer in enumerate(self.lm.layers):
            hidden = layer(hidden, attention_mask=bias, position_embeddings=(cos, sin))  # (1, T, D)
            if index < self.deepstack_layers:
                extra = deepstack_embeds[index].index_select(0, slot).unsqueeze(0)  # (1, T, D)
                hidden = torch.where(is_image, hidden + extra, hidden)
        out: torch.Tensor = hidden  # (1, T, D): the input of the final norm
        return out


# ---------------------------------------------------------------------------------------------- export
def _load_text_encoder(folder: ModelFolder) -> Any:
    from transformers import Qwen3VLForConditionalGeneration

    path = folder.root / "text_encoder"
    try:
        model: Any = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise ModelLoadError(str(path), f"cannot load the text encoder for export: {err}") from err
    return model.eval().requires_grad_(False)


def text_layout(folder: ModelFolder, max_tokens: int, model: Any) -> TextEncoderLayout:
    """The static shapes for this folder (VLM grid from the processor config and ``vlm_image_size``)."""
    from tokenizers import Tokenizer

    from model_runtime.preprocess import num_image_tokens, vlm_inputs

    width, height = folder.config.vlm_image_size
    pixels, grid = vlm_inputs(np.zeros((height, width, 3), dtype=np.uint8), folder.processor_config)
    merge = int(model.config.vision_config.spatial_merge_size)
    pad = Tokenizer.from_file(str(folder.tokenizer_file)).token_to_id("<|endoftext|>")
    return TextEncoderLayout(
        max_tokens=max_tokens,
        hidden=int(model.config.text_config.hidden_size),
        pad_token_id=int(pad) if pad is not None else 0,
        image_token_id=int(model.config.image_token_id),
        spatial_merge_size=merge,
        vlm_image_size=(int(width), int(height)),
        image_grid_thw=(int(grid[0, 0]), int(grid[0, 1]), int(grid[0, 2])),
        patches=int(pixels.shape[0]),
        patch_dim=int(pixels.shape[1]),
        image_tokens=num_image_tokens(grid, merge),
        deepstack_layers=len(model.config.vision_config.deepstack_visual_indexes),
    )


def _use_eager_attention(model: Any) -> None:
    """Explicit matmul/softmax attention for tracing (the SDPA path adds nothing a phone graph needs)."""
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config._attn_implementation = "eager"


def example_inputs(layout: TextEncoderLayout) -> tuple[torch.Tensor, ...]:
    """Deterministic text-graph inputs with the static shapes (a short text-only prompt, padded)."""
    from model_runtime.text_positions import mrope_position_ids, pad_right

    real = np.arange(5, 5 + min(16, layout.max_tokens), dtype=np.int64)  # (n,) token ids
    ids, mask = pad_right(real, layout.max_tokens, layout.pad_token_id)  # (1, T), (1, T)
    positions = mrope_position_ids(real, -1, None, layout.spatial_merge_size, layout.max_tokens)  # (3, 1, T)
    gen = torch.Generator().manual_seed(3)
    return (
        torch.from_numpy(ids),
        torch.from_numpy(mask),
        torch.from_numpy(positions),
        torch.zeros(1, layout.max_tokens, dtype=torch.int64),  # (1, T) image mask
        torch.randn(layout.image_tokens, layout.hidden, generator=gen),  # (N, D)
        torch.randn(layout.deepstack_layers, layout.image_tokens, layout.hidden, generator=gen),  # (S, N, D)
    )


def _signature(path: Path) -> dict[str, Any]:
    from model_runtime.export.onnx_export import graph_signature

    inputs, outputs, opset = graph_signature(path)
    external = sorted(p.name for p in path.parent.glob(path.name + ".data"))
    return {"inputs": inputs, "outputs": outputs, "opset": opset, "external_data": external}


@dataclass
class TextEncoderExport:
    """What the stage produced: the manifest section and the parity measured."""

    manifest: dict[str, Any]
    parity: dict[str, Any]


def export_text_encoder(
    folder: ModelFolder, out: Path, max_tokens: int, opset: int = 17, host_fallback: str | None = None
) -> TextEncoderExport:
    """Trace the vision and text graphs into ``out/text_encoder_onnx/`` and measure them against torch.

    Args:
        folder: The DreamLite folder.
        out: The bundle folder being built.
        max_tokens: Static text length ``T``.
        opset: ONNX opset (17, as the other graphs).
        host_fallback: The bundle's torch copy of the encoder (``text_encoder``) or None.

    Returns:
        ``manifest.text.encoder`` (graph paths, hashes, shapes, ids, session, parity) and the parity report.
    """
    from model_runtime.export.onnx_export import export_graph

    model = _load_text_encoder(folder)
    layout = text_layout(folder, max_tokens, model)
    reference = _torch_reference(folder, model, layout)  # before switching attention: the backend's path
    _use_eager_attention(model)
    inner = model.model
    grid = torch.tensor([layout.image_grid_thw], dtype=torch.int64)  # (1, 3)
    vision = VisionGraph(inner.visual, grid).eval()
    gen = torch.Generator().manual_seed(4)
    pixels = torch.randn(layout.patches, layout.patch_dim, generator=gen)  # (P, K)
    export_graph(vision, (pixels,), out / VISION_GRAPH, VISION_INPUTS, VISION_OUTPUTS, opset)
    text = TextGraph(inner.language_model, layout.max_tokens, layout.image_tokens, layout.deepstack_layers)
    export_graph(text.eval(), example_inputs(layout), out / TEXT_GRAPH, TEXT_INPUTS, TEXT_OUTPUTS, opset)
    del vision, text, model, inner

    parity = _measure(out, layout, reference)
    graphs = {
        name: {"path": rel, "sha256": hash_file(out / rel), **_signature(out / rel)}
        for name, rel in (("text", TEXT_GRAPH), ("vision", VISION_GRAPH))
    }
    manifest = {
        "exported": True,
        "runtime": "onnx",
        "framework": "onnxruntime (CPU EP), float32",
        "graphs": graphs,
        "session": dict(SESSION),
        "max_tokens": layout.max_tokens,
        "hidden": layout.hidden,
        "pad_token_id": layout.pad_token_id,
        "image_token_id": layout.image_token_id,
        "spatial_merge_size": layout.spatial_merge_size,
        "vlm_image_size": list(layout.vlm_image_size),
        "image_grid_thw": list(layout.image_grid_thw),
        "pixel_values": [layout.patches, layout.patch_dim],
        "image_tokens": layout.image_tokens,
        "deepstack_layers": layout.deepstack_layers,
        "position_ids": "M-RoPE (3, 1, T), computed outside the graph: model_runtime.text_positions."
        "mrope_position_ids (docs/bundle.md, Text encoder)",
        "padding": "right: pad_token_id, attention_mask 0; outputs of padded positions are discarded",
        "features": "last decoder layer output before the final RMSNorm, (T, D) float32; the pipeline drops "
        "drop_idx tokens and right-pads to seq_len",
        "host_fallback": host_fallback,
        "parity": parity,
    }
    return TextEncoderExport(manifest=manifest, parity=parity)


def _parity_inputs(folder: ModelFolder, layout: TextEncoderLayout) -> list[Any]:
    """Held-out prompts as :class:`TextEncoderInput` (two generate, one edit with a synthetic image)."""
    from model_runtime.backends.base import TextEncoderInput
    from model_runtime.export.calibration import synthetic_image
    from model_runtime.preprocess import resize_lanczos, vlm_inputs
    from model_runtime.prompts import build_prompt
    from model_runtime.tokenization import PromptTokenizer

    tokenizer = PromptTokenizer(folder.tokenizer_file)
    items = []
    for task, prompt in PARITY_PROMPTS:
        template = build_prompt(task, prompt)
        if task == "edit":
            image = resize_lanczos(synthetic_image(98, (288, 224)), layout.vlm_image_size)
            pixels, grid = vlm_inputs(image, folder.processor_config)
            ids = tokenizer.encode(template, layout.image_tokens)
            items.append(TextEncoderInput(ids, pixels, grid))
        else:
            items.append(TextEncoderInput(tokenizer.encode(template)))
    return [i for i in items if i.input_ids.shape[0] <= layout.max_tokens]


def _torch_reference(folder: ModelFolder, model: Any, layout: TextEncoderLayout) -> list[tuple[Any, Any]]:
    from model_runtime.backends.torch_backend import TorchTextEncoder

    encoder = TorchTextEncoder(model, torch.device("cpu"), torch.float32)
    return [(item, encoder(item)) for item in _parity_inputs(folder, layout)]


def _measure(out: Path, layout: TextEncoderLayout, reference: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Max/mean |Δ| of the ONNX encoder (CPU EP, the pinned session) vs torch on the held-out prompts."""
    from model_runtime.bundle import OnnxTextEncoder

    encoder = OnnxTextEncoder.from_layout(out, TEXT_GRAPH, VISION_GRAPH, layout_dict(layout), SESSION)
    per: dict[str, dict[str, float | int]] = {}
    worst = 0.0
    for index, (item, expected) in enumerate(reference):
        got: NDArray[np.float32] = encoder(item)  # (T, D) float32
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        task = "edit" if item.pixel_values is not None else "generate"
        per[f"{task}_{index}"] = {
            "tokens": int(item.input_ids.shape[0]),
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
        }
        worst = max(worst, float(diff.max()))
    encoder.close()
    return {"reference": "torch float32 (prefinal_text_states)", "max_abs": worst, "prompts": per}


def layout_dict(layout: TextEncoderLayout) -> dict[str, Any]:
    """The layout fields as the manifest stores them (what :class:`OnnxTextEncoder` reads)."""
    return {
        "max_tokens": layout.max_tokens,
        "hidden": layout.hidden,
        "pad_token_id": layout.pad_token_id,
        "image_token_id": layout.image_token_id,
        "spatial_merge_size": layout.spatial_merge_size,
        "image_grid_thw": list(layout.image_grid_thw),
        "pixel_values": [layout.patches, layout.patch_dim],
        "image_tokens": layout.image_tokens,
        "deepstack_layers": layout.deepstack_layers,
    }
