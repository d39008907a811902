"""Stage ④ torch backend: the official weight folder, unchanged, on diffusers + transformers modules.

* UNet: diffusers ``DreamLiteUNetModel`` (same keys as the official checkpoint).
* VAE: diffusers ``AutoencoderTiny`` (TAESDXL); scaling 1, shift 0, as the official pipeline.
* Text: transformers ``Qwen3VLForConditionalGeneration``. The UNet is conditioned on the **last decoder
  layer's output before the final RMSNorm** — ``hidden_states[-1]`` in transformers 4.57.3, which the
  official code pins. In transformers 5.x ``hidden_states[-1]`` is the post-norm state, so this module
  reads the input of the final norm with a forward pre-hook instead. Edit inputs also carry
  ``mm_token_type_ids`` (1 on image tokens), which transformers 5.x requires for M-RoPE and which the
  official 4.57.3 code derived itself.
* Schedule: diffusers ``FlowMatchEulerDiscreteScheduler`` from ``scheduler/scheduler_config.json``.

This is the only runtime module that imports torch, diffusers and transformers.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from model_runtime.backends.base import BackendInfo, ModelSpec, TextEncoderInput
from model_runtime.dtypes import DType, check_dtype
from model_runtime.errors import BackendUnavailableError, InvalidInputError, ModelLoadError
from model_runtime.folder import ModelFolder, open_model_folder
from model_runtime.sampler import Schedule, compute_schedule

logger = logging.getLogger(__name__)

TORCH_DTYPES: dict[DType, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str) -> torch.device:
    """Validate a device string (``cpu``, ``cuda``, ``cuda:N``) against what this machine has."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device `{device}` requested but no CUDA device is available here")
        return torch.device(device)
    raise InvalidInputError.one_of("device", ["cpu", "cuda", "cuda:N"], device)


_TEXT_STATE_LOCK = threading.Lock()
"""Serialises :func:`prefinal_text_states`: its norm hook and the cleared ``rope_deltas`` are state on the
shared module, so two threads encoding at once (two apps on one runtime, or a job still running while another
app warms up) saw each other's norm calls ("expected one call of the final norm, saw 2", measured)."""


def prefinal_text_states(
    text_encoder: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    shared_prefix: int = 0,
) -> torch.Tensor:
    """Last decoder layer's hidden states before the final norm (official DreamLite text features).

    Works with autograd (used by training) and under ``inference_mode``.

    Args:
        text_encoder: A ``Qwen3VLForConditionalGeneration``.
        input_ids: ``(B, T)`` int64.
        attention_mask: ``(B, T)`` int64, 1 = real token.
        pixel_values: ``(P, K)`` VLM patches of all images in the batch, or None.
        image_grid_thw: ``(n_images, 3)`` int64, or None.
        shared_prefix: Above 0: the first ``shared_prefix`` ids are the same text in every row (no image
            token among them, at least one real token after them in every row). The encoder is causal, so
            their states do not depend on what follows: they are computed once, for row 0, and the rest of
            every row attends to them through the key/value cache. The same maths, rounded differently
            (~1e-7); training batches share a template prefix of about half their tokens.

    Returns:
        ``(B, T, D)`` hidden states in the encoder's dtype.
    """
    model = text_encoder.model  # Qwen3VLModel: vision tower + language model, no LM head
    captured: list[torch.Tensor] = []

    def grab(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])

    image_kwargs: dict[str, Any] = {}
    if pixel_values is not None:
        image_token_id = int(text_encoder.config.image_token_id)
        image_kwargs = {
            "pixel_values": pixel_values,
            "image_grid_thw": image_grid_thw,
            "mm_token_type_ids": (input_ids == image_token_id).to(torch.int32),
        }
    with _TEXT_STATE_LOCK:
        handle = model.language_model.norm.register_forward_pre_hook(grab)
        try:
            # M-RoPE offsets are cached on the module between calls; never reuse them
            model.rope_deltas = None
            if shared_prefix <= 0:
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **image_kwargs)
            else:
                _prefix_then_rest(model, input_ids, attention_mask, image_kwargs, shared_prefix)
        finally:
            handle.remove()
            model.rope_deltas = None
    if shared_prefix <= 0 and len(captured) != 1:
        raise RuntimeError(f"expected one call of the final norm, saw {len(captured)}")
    if shared_prefix > 0 and len(captured) != 2:
        raise RuntimeError(f"expected two calls of the final norm (prefix, rest), saw {len(captured)}")
    return whole_rows(captured)


def whole_rows(captured: list[torch.Tensor]) -> torch.Tensor:
    """``(B, T, D)`` states of whole rows from what one module gave over one text pass.

    One tensor (the plain pass) is returned as is; two (``shared_prefix``: ``(1, P, D)`` row 0's prefix,
    ``(B, T - P, D)`` every row's rest) are joined, the prefix expanded to every row.
    """
    if len(captured) == 1:
        return captured[0]
    if len(captured) != 2:
        raise RuntimeError(f"expected one or two calls (prefix, rest), saw {len(captured)}")
    prefix, rest = captured  # (1, P, D), (B, T - P, D)
    return torch.cat([prefix.expand(rest.shape[0], -1, -1), rest], dim=1)  # (B, T, D)


def _prefix_then_rest(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_kwargs: dict[str, Any],
    prefix: int,
) -> None:
    """Run ``model`` on row 0's first ``prefix`` tokens, then on every row's rest with that cache."""
    from transformers.cache_utils import DynamicCache

    B, T = input_ids.shape
    if not 0 < prefix < T or bool((attention_mask[:, : prefix + 1] == 0).any()):
        raise ValueError(
            f"shared_prefix: every row needs real tokens through the prefix and one after it, got {prefix}"
        )
    if bool((input_ids[:, :prefix] != input_ids[:1, :prefix]).any()):
        raise ValueError(f"shared_prefix: expected ids shared by every row, got {prefix} that are not")
    cache = DynamicCache(config=model.config.text_config)
    model(
        input_ids=input_ids[:1, :prefix],
        attention_mask=attention_mask[:1, :prefix],
        cache=cache,
        use_cache=True,
    )
    cache.batch_repeat_interleave(B)  # (B, H, P, d) keys and values of every layer
    position_ids = None  # text after text: the cache length offsets the positions
    rest = dict(image_kwargs)
    if image_kwargs:
        mm = image_kwargs["mm_token_type_ids"]  # (B, T) int32
        if bool(mm[:, :prefix].any()):
            raise ValueError("shared_prefix: the prefix must hold no image token")
        full, _ = model.get_rope_index(
            input_ids,
            mm_token_type_ids=mm,
            image_grid_thw=image_kwargs["image_grid_thw"],
            attention_mask=attention_mask,
        )  # (3, B, T) M-RoPE positions of the whole rows
        position_ids = full[:, :, prefix:]  # (3, B, T - P)
        rest["mm_token_type_ids"] = mm[:, prefix:]
    model(
        input_ids=input_ids[:, prefix:],
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        **rest,
    )


class TorchTextEncoder:
    """Qwen3-VL pre-final-norm features for one tokenized prompt."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype

    def __call__(self, inputs: TextEncoderInput) -> NDArray[np.float32]:
        """``(T, D)`` float32 features of one prompt (batch 1, no padding, as the official pipeline)."""
        ids = torch.from_numpy(inputs.input_ids).to(self.device)[None]  # (1, T) int64
        mask = torch.ones_like(ids)  # (1, T) int64: batch 1, no padding (as the official pipeline)
        pixels = grid = None
        if inputs.pixel_values is not None:
            pixels = torch.from_numpy(inputs.pixel_values).to(self.device, self.dtype)  # (P, K)
            grid = torch.from_numpy(np.asarray(inputs.image_grid_thw)).to(self.device)
        with torch.inference_mode():
            states = prefinal_text_states(self.model, ids, mask, pixels, grid)  # (1, T, D) dtype
        result: NDArray[np.float32] = states[0].to(torch.float32).cpu().numpy()  # (T, D) float32
        return result


class TorchDenoiser:
    """``DreamLiteUNetModel`` forward with the official call signature."""

    def __init__(self, unet: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.unet = unet
        self.device = device
        self.dtype = dtype

    def __call__(
        self,
        sample: NDArray[np.float32],
        timestep: NDArray[np.float32],
        text: NDArray[np.float32],
        text_mask: NDArray[np.int64],
        time_ids: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """One UNet forward (see :class:`model_runtime.backends.base.Denoiser`)."""
        d, t = self.device, self.dtype
        with torch.inference_mode():
            out = self.unet(
                torch.from_numpy(sample).to(d, t),  # (B, 4, h, 2w)
                torch.from_numpy(timestep).to(d, t),  # (B,) in the latents' dtype, as the official code
                encoder_hidden_states=torch.from_numpy(text).to(d, t),  # (B, L, D)
                encoder_attention_mask=torch.from_numpy(text_mask).to(d),  # (B, L) int64
                added_cond_kwargs={"time_ids": torch.from_numpy(time_ids).to(d, t)},  # (B, 2) = [W, H]
                return_dict=False,
            )[0]
        result: NDArray[np.float32] = out.to(torch.float32).cpu().numpy()  # (B, 4, h, 2w) float32
        return result


class TorchVaeEncoder:
    """``AutoencoderTiny.encode(x).latents`` (no scaling, as the official pipeline)."""

    def __init__(self, vae: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.vae, self.device, self.dtype = vae, device, dtype

    def __call__(self, images: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(B, 3, H, W)`` in [−1, 1] → ``(B, 4, H/8, W/8)``."""
        with torch.inference_mode():
            latents = self.vae.encode(torch.from_numpy(images).to(self.device, self.dtype)).latents
        result: NDArray[np.float32] = latents.to(torch.float32).cpu().numpy()  # (B, 4, H/8, W/8)
        return result


class TorchVaeDecoder:
    """``AutoencoderTiny.decode`` (scaling 1, shift 0)."""

    def __init__(self, vae: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.vae, self.device, self.dtype = vae, device, dtype

    def __call__(self, latents: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(B, 4, h, w)`` → ``(B, 3, 8h, 8w)``."""
        with torch.inference_mode():
            images = self.vae.decode(
                torch.from_numpy(latents).to(self.device, self.dtype), return_dict=False
            )[0]
        result: NDArray[np.float32] = images.to(torch.float32).cpu().numpy()  # (B, 3, H, W) ≈ [−1, 1]
        return result


def _load(what: str, path: Path, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise ModelLoadError(str(path), f"cannot load the {what}: {err}") from err


class TorchBackend:
    """A DreamLite folder loaded with diffusers and transformers modules."""

    text_len: int | None = None

    def __init__(self, folder: ModelFolder, *, device: str = "cpu", dtype: str = "float32") -> None:
        from diffusers import AutoencoderTiny, DreamLiteUNetModel
        from transformers import Qwen3VLForConditionalGeneration

        self.folder = folder
        self._dtype: DType = check_dtype(dtype)
        torch_device = resolve_device(device)
        tdt = TORCH_DTYPES[self._dtype]
        root = folder.root
        unet = _load(
            "UNet", root / "unet", DreamLiteUNetModel.from_pretrained, root, subfolder="unet", torch_dtype=tdt
        )
        vae = _load(
            "VAE", root / "vae", AutoencoderTiny.from_pretrained, root, subfolder="vae", torch_dtype=tdt
        )
        text_encoder = _load(
            "text encoder",
            root / "text_encoder",
            Qwen3VLForConditionalGeneration.from_pretrained,
            root / "text_encoder",
            dtype=tdt,
        )
        for module in (unet, vae, text_encoder):
            module.to(torch_device).eval().requires_grad_(False)
        self.unet, self.vae, self.text_encoder_module = unet, vae, text_encoder
        self.spec = ModelSpec(
            config=folder.config,
            processor_config=folder.processor_config,
            tokenizer_file=folder.tokenizer_file,
            image_token_id=folder.image_token_id,
            latent_channels=int(folder.vae_config.get("latent_channels", 4)),
            vae_scale=2 ** (len(folder.vae_config.get("encoder_block_out_channels", [64] * 4)) - 1),
        )
        self.text_encoder = TorchTextEncoder(text_encoder, torch_device, tdt)
        self.denoiser = TorchDenoiser(unet, torch_device, tdt)
        self.vae_encoder = TorchVaeEncoder(vae, torch_device, tdt)
        self.vae_decoder = TorchVaeDecoder(vae, torch_device, tdt)
        import diffusers
        import transformers

        self.info = BackendInfo(
            name="torch",
            device=str(torch_device),
            dtype=self._dtype,
            provider="torch",
            encoder_id=f"torch:{folder.config.model_id}:{self._dtype}",
            details={
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "model_dir": str(root),
            },
        )
        logger.info("torch backend ready model=%s device=%s dtype=%s", folder.config.model_id, device, dtype)

    def schedule(self, width: int, height: int, steps: int) -> Schedule:
        """Sigmas/timesteps from the folder's scheduler config."""
        return compute_schedule(self.folder.scheduler_config, width, height, steps)

    def supported_sizes(self) -> list[tuple[int, int]] | None:
        """Any size that passes the size rule."""
        return None

    def artifact_sha256(self) -> str:
        """Hash of the weight folder."""
        return self.folder.weights_sha256()

    def close(self) -> None:
        """Drop the modules (and CUDA cache)."""
        self.unet = self.vae = self.text_encoder_module = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_torch_backend(source: str | Path, *, device: str = "cpu", dtype: str = "float32") -> TorchBackend:
    """Open and load an official DreamLite folder on torch."""
    return TorchBackend(open_model_folder(source), device=device, dtype=dtype)
