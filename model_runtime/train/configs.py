"""Configs of dreamlite-nano: the DreamLite-mobile component classes and block structure at nano widths.

Every component keeps the official class and every structural flag of the real DreamLite-mobile config
(``docs/dreamlite-mobile-unet-keys.json`` and the reference brief §2.1): the same down/mid/up block types,
``layers_per_block`` 2, multi-query attention (``num_kv_heads`` 1), QK-RMSNorm, depthwise-separable ResNet
convs, the ``text_proj_rms`` text projector, the ``time`` added embedding of ``time_ids`` = [W, H], GEGLU
×3 feed-forwards and linear transformer projections. Only widths, depths and the text width differ.
:class:`NanoSizes` holds the sizes; ``NanoSizes.test()`` is a much smaller instance for unit tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from model_runtime.train.world import IMAGE_SIZE

DIFFUSERS_VERSION = "0.42.1"


@dataclass(frozen=True, slots=True)
class NanoSizes:
    """The sizes that differ from DreamLite-mobile (which has 256/512/896 channels and a 2048-wide text).

    Attributes:
        unet_channels: ``block_out_channels`` of the three UNet stages.
        unet_heads: Attention heads per stage (diffusers' ``attention_head_dim``).
        unet_depth: ``transformer_layers_per_block`` per stage (the mid block uses the last).
        unet_groups: GroupNorm groups.
        cross_dim: ``cross_attention_dim`` (width of the projected text tokens).
        time_dim: ``addition_time_embed_dim`` (sinusoid width per time id).
        vae_channels: AutoencoderTiny block width (the same at every level, as TAESD).
        text_hidden: Qwen3-VL text hidden size (= the UNet's ``encoder_hid_dim``).
        text_layers: Qwen3-VL text decoder layers.
        text_heads: Query heads of the text decoder.
        text_kv_heads: Key/value heads of the text decoder.
        vision_hidden: Vision tower width.
        vision_depth: Vision tower blocks.
        vlm_image: Side of the edit source given to the vision tower (pixels).
        vae_act_fn: The VAE's activation. TAESDXL's ReLU fell into a dead zone with the recipe's seed: the
            encoder stopped telling green objects on black from the background (no gradient came back), and
            oversampling them did not revive it; SiLU has a gradient everywhere (``vae_fit`` docstring).
            A ``recipe.json`` written before this field reads as ``relu``, the VAE it was made with.
    """

    unet_channels: tuple[int, int, int] = (32, 64, 128)
    unet_heads: tuple[int, int, int] = (1, 2, 4)
    unet_depth: tuple[int, int, int] = (1, 1, 3)
    unet_groups: int = 8
    cross_dim: int = 128
    time_dim: int = 64
    vae_channels: int = 24
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_hidden: int = 64
    vision_depth: int = 2
    vlm_image: int = 128
    vae_act_fn: str = "silu"

    @classmethod
    def test(cls) -> NanoSizes:
        """A very small instance for unit tests (seconds per stage)."""
        return cls(
            unet_channels=(16, 32, 32),
            unet_heads=(1, 1, 2),
            unet_depth=(1, 1, 1),
            unet_groups=8,
            cross_dim=32,
            time_dim=16,
            vae_channels=8,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            text_kv_heads=1,
            vision_hidden=16,
            vision_depth=1,
            vlm_image=64,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NanoSizes:
        """Inverse of :meth:`to_json`."""
        fields = dict(data)
        fields.setdefault("vae_act_fn", "relu")  # written before the field existed
        for key in ("unet_channels", "unet_heads", "unet_depth"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


# Block layouts of the UNet, as overrides of :func:`unet_config`. ``mobile`` is DreamLite-mobile's (self-
# attention only at the deepest stage); the others add self-attention with the same block types, for probes
# of the in-context copy path: ``attn2`` at the middle stage (8×16 tokens), ``topup`` in the last up stage
# (16×32 tokens, where the mobile layout has no attention at all). Probes:
# ``scripts/nano_copy_path_probe.py``, ``scripts/nano_cond_usage_probe.py``.
UNET_LAYOUTS: dict[str, dict[str, Any]] = {
    "mobile": {},
    "attn2": {
        "down_block_types": [
            "CrossAttnDownRemoveSelfAttnBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
        ],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    },
    "topup": {
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpRemoveSelfAttnBlock2DV1", "CrossAttnUpBlock2D"],
    },
}


def unet_config(s: NanoSizes) -> dict[str, Any]:
    """``unet/config.json``: DreamLite-mobile's keys and flags at nano widths."""
    return {
        "_class_name": "DreamLiteUNetModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": "time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": s.time_dim,
        "attention_head_dim": list(s.unet_heads),
        "attention_type": "default",
        "block_out_channels": list(s.unet_channels),
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": s.cross_dim,
        "cross_attention_norm": None,
        "down_block_types": [
            "CrossAttnDownRemoveSelfAttnBlock2D",
            "CrossAttnDownRemoveSelfAttnBlock2D",
            "CrossAttnDownBlock2D",
        ],
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": False,
        "encoder_hid_dim": s.text_hidden,
        "encoder_hid_dim_type": "text_proj_rms",
        "ff_mult": 3,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": s.unet_groups,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "num_kv_heads": 1,
        "num_mid_layers": 1,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2 * s.time_dim,
        "qk_norm": "rms_norm",
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": None,
        "sample_size": IMAGE_SIZE // 8,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": list(s.unet_depth),
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpRemoveSelfAttnBlock2DV1", "UpBlock2D"],
        "upcast_attention": None,
        "use_linear_projection": True,
        "use_sep_conv": True,
    }


def vae_config(s: NanoSizes) -> dict[str, Any]:
    """``vae/config.json``: TAESDXL's structure (8× down, 4 latent channels, scaling 1) at nano width.

    The activation is ``s.vae_act_fn`` (TAESDXL's is ReLU).
    """
    ch = [s.vae_channels] * 4
    return {
        "_class_name": "AutoencoderTiny",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": s.vae_act_fn,
        "decoder_block_out_channels": ch,
        "encoder_block_out_channels": ch,
        "force_upcast": False,
        "in_channels": 3,
        "latent_channels": 4,
        "latent_magnitude": 3,
        "latent_shift": 0.5,
        "num_decoder_blocks": [3, 3, 3, 1],
        "num_encoder_blocks": [1, 3, 3, 3],
        "out_channels": 3,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
        "upsample_fn": "nearest",
        "upsampling_scaling_factor": 2,
    }


def scheduler_config() -> dict[str, Any]:
    """``scheduler/scheduler_config.json``: flow-matching Euler with dynamic exponential shift.

    The same documented values as the conformance fixture (the real file is not published).
    """
    return {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "invert_sigmas": False,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "shift_terminal": None,
        "stochastic_sampling": False,
        "time_shift_type": "exponential",
        "use_beta_sigmas": False,
        "use_dynamic_shifting": True,
        "use_exponential_sigmas": False,
        "use_karras_sigmas": False,
    }


def text_encoder_config(s: NanoSizes, vocab_size: int, token_ids: dict[str, int]) -> dict[str, Any]:
    """Arguments of transformers' ``Qwen3VLConfig`` for the nano text encoder.

    Args:
        s: Sizes.
        vocab_size: Embedding rows (the tokenizer's length padded to a multiple of 64, as Qwen pads).
        token_ids: Ids of ``<|endoftext|>``, ``<|im_end|>``, ``<|image_pad|>``, ``<|video_pad|>``,
            ``<|vision_start|>`` and ``<|vision_end|>``.
    """
    head_dim = s.text_hidden // s.text_heads
    quarter = head_dim // 8  # mrope sections (t, h, w) sum to head_dim / 2, as Qwen3-VL's [24, 20, 20]
    grid = s.vlm_image // 16
    return {
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": token_ids["<|endoftext|>"],
            "eos_token_id": token_ids["<|im_end|>"],
            "head_dim": head_dim,
            "hidden_act": "silu",
            "hidden_size": s.text_hidden,
            "initializer_range": 0.02,
            "intermediate_size": 3 * s.text_hidden,
            "max_position_embeddings": 4096,
            "num_attention_heads": s.text_heads,
            "num_hidden_layers": s.text_layers,
            "num_key_value_heads": s.text_kv_heads,
            "rms_norm_eps": 1e-06,
            "rope_parameters": {
                "mrope_interleaved": True,
                "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter],
                "rope_theta": 5000000,
                "rope_type": "default",
            },
            "tie_word_embeddings": True,
            "vocab_size": vocab_size,
        },
        "vision_config": {
            "deepstack_visual_indexes": list(range(min(s.vision_depth, s.text_layers))),
            "depth": s.vision_depth,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": s.vision_hidden,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": 2 * s.vision_hidden,
            "num_heads": 2,
            "num_position_embeddings": grid * grid,
            "out_hidden_size": s.text_hidden,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "tie_word_embeddings": True,
    }


def processor_config(s: NanoSizes) -> dict[str, Any]:
    """``processor/preprocessor_config.json``: Qwen2-VL's image processor, min pixels = the VLM image."""
    return {
        "crop_size": None,
        "data_format": "channels_first",
        "default_to_square": True,
        "device": None,
        "disable_grouping": None,
        "do_center_crop": None,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": None,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "image_std": [0.5, 0.5, 0.5],
        "input_data_format": None,
        "max_pixels": None,
        "merge_size": 2,
        "min_pixels": None,
        "pad_size": None,
        "patch_size": 16,
        "processor_class": "Qwen3VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "return_tensors": None,
        "size": {"longest_edge": 16777216, "shortest_edge": s.vlm_image * s.vlm_image},
        "temporal_patch_size": 2,
    }


def video_processor_config() -> dict[str, Any]:
    """``processor/video_preprocessor_config.json`` (unused by the pipeline; part of the layout)."""
    return {
        "crop_size": None,
        "data_format": "channels_first",
        "default_to_square": True,
        "device": None,
        "do_center_crop": None,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "do_sample_frames": True,
        "fps": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "input_data_format": None,
        "max_frames": 768,
        "merge_size": 2,
        "min_frames": 4,
        "num_frames": None,
        "pad_size": None,
        "patch_size": 16,
        "processor_class": "Qwen3VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "return_metadata": False,
        "size": {"longest_edge": 25165824, "shortest_edge": 4096},
        "temporal_patch_size": 2,
        "video_metadata": None,
        "video_processor_type": "Qwen3VLVideoProcessor",
    }


def model_index() -> dict[str, Any]:
    """``model_index.json`` of a mobile folder (the UNet from diffusers, as the conformance fixture)."""
    return {
        "_class_name": "DreamLiteMobilePipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "processor": ["transformers", "Qwen3VLProcessor"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"],
        "unet": ["diffusers", "DreamLiteUNetModel"],
        "vae": ["diffusers", "AutoencoderTiny"],
    }


def folder_config(
    s: NanoSizes,
    drop_idx: dict[str, int],
    *,
    variant: str = "mobile",
    steps: int = 4,
    guidance: tuple[float, float] | None = None,
    model_id: str = "dreamlite-nano",
) -> dict[str, Any]:
    """``dreamlite.json``: the pipeline constants of the nano folder.

    Args:
        s: Sizes.
        drop_idx: Template tokens to drop per task (computed from the nano tokenizer).
        variant: ``mobile`` (the distilled student) or ``base`` (the guided teacher).
        steps: Default steps.
        guidance: (text, image) guidance scales for ``base``.
        model_id: Name reported by the server.
    """
    data: dict[str, Any] = {
        "format": 1,
        "model_id": model_id,
        "variant": variant,
        "description": "dreamlite-nano: a DreamLite-family model trained in this repo on the shapes world "
        "(python -m model_runtime.train); see docs/nano.md.",
        "drop_idx": dict(drop_idx),
        "default_size": [IMAGE_SIZE, IMAGE_SIZE],
        "edit_working_size": [IMAGE_SIZE, IMAGE_SIZE],
        "vlm_image_size": [s.vlm_image, s.vlm_image],
        "default_steps": steps,
        "size_multiple": 32,
        "min_size": 64,
        "max_size": 512,
    }
    if guidance is not None:
        data["guidance_scale"], data["image_guidance_scale"] = guidance
    return data
