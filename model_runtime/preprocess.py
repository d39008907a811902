"""Stage ② inputs: edit-source decoding, resizing, and the exact VLM and VAE input tensors.

Everything here is numpy + Pillow, so every backend (and a phone-like simulator) prepares identical bytes.

* The edit source is decoded like ``diffusers.utils.load_image`` (EXIF transpose, then RGB).
* Resizes use Pillow LANCZOS, as the official mobile pipeline does (source → VAE working size, source →
  VLM size, output → source size).
* VLM pixels follow the Qwen2-VL image processor: ``smart_resize`` to a multiple of patch·merge inside
  [min_pixels, max_pixels]; rescale and normalise fused as ``(x − mean/r)/(std/r)`` in float32 (what the
  fast processor computes; the fixture's ``vlm_pixel_values`` are exactly this); the frame repeated
  ``temporal_patch_size`` times; patches ordered by 2×2 merge window.
* The VAE input is ``x/255·2 − 1`` in float32, NCHW (diffusers ``VaeImageProcessor``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from model_runtime.errors import InvalidInputError

RGB8 = NDArray[np.uint8]


def decode_image(data: bytes | Path, *, max_pixels: int | None = None, field: str = "image") -> RGB8:
    """Decode an image file to an RGB uint8 array, rejecting oversized images before decoding pixels.

    Args:
        data: Encoded bytes or a path.
        max_pixels: Largest width·height accepted (checked from the header, before pixel data is read).
        field: Name used in error messages.

    Returns:
        ``(H, W, 3)`` uint8.

    Raises:
        InvalidInputError: The data is not a readable image or has too many pixels.
    """
    try:
        raw = data.read_bytes() if isinstance(data, Path) else data
    except OSError as err:
        raise InvalidInputError(field, f"cannot be read ({err.strerror}).", given=str(data)) from err
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise InvalidInputError(
                    field,
                    "has too many pixels.",
                    allowed=f"at most {max_pixels} pixels",
                    given=f"{width}x{height}",
                )
            img.load()
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except InvalidInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise InvalidInputError(
            field, "is not a readable image.", allowed="PNG, JPEG or WebP", given=f"{len(raw)} bytes"
        ) from err
    return np.asarray(rgb, dtype=np.uint8).copy()  # (H, W, 3) uint8


def resize_lanczos(image: RGB8, size: tuple[int, int]) -> RGB8:
    """Resize with Pillow LANCZOS (aspect ratio not preserved, as in the official code).

    Args:
        image: ``(H, W, 3)`` uint8.
        size: Target (W, H).

    Returns:
        ``(size[1], size[0], 3)`` uint8; the input itself when the size already matches.
    """
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    out = Image.fromarray(image, mode="RGB").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


def vae_input(image: RGB8) -> NDArray[np.float32]:
    """The VAE encoder input of one RGB image: ``x/255·2 − 1`` in float32.

    Returns:
        ``(3, H, W)`` float32 in [−1, 1].
    """
    x = image.astype(np.float32) / np.float32(255.0)  # (H, W, 3) float32 in [0, 1]
    x = x * np.float32(2.0) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, H, W) float32


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's size rule: sides multiples of ``factor``, area inside [min_pixels, max_pixels].

    Returns:
        (height, width) the vision tower sees.
    """
    if max(height, width) / min(height, width) > 200:
        raise InvalidInputError("image", "has an aspect ratio above 200.", given=f"{width}x{height}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def vlm_inputs(
    image: RGB8, processor_config: dict[str, Any]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Pixel patches and grid of one image for the Qwen3-VL vision tower.

    Args:
        image: ``(H, W, 3)`` uint8, already at the pipeline's VLM size (official mobile: 256²).
        processor_config: ``processor/preprocessor_config.json`` of the folder.

    Returns:
        ``pixel_values`` ``(gt·gh·gw, 3·tp·ps·ps)`` float32 and ``image_grid_thw`` ``(1, 3)`` int64.
    """
    ps = int(processor_config.get("patch_size", 14))
    ms = int(processor_config.get("merge_size", 2))
    tp = int(processor_config.get("temporal_patch_size", 2))
    size = processor_config.get("size") or {}
    min_pixels = int(processor_config.get("min_pixels") or size.get("shortest_edge", 56 * 56))
    max_pixels = int(processor_config.get("max_pixels") or size.get("longest_edge", 28 * 28 * 1280))
    height, width = image.shape[:2]
    rh, rw = smart_resize(height, width, ps * ms, min_pixels, max_pixels)
    if (rh, rw) != (height, width):
        # The fast processor would resize with torchvision; Pillow bicubic is the slow processor's rule.
        resample = Image.Resampling(int(processor_config.get("resample", 3)))
        image = np.asarray(Image.fromarray(image, mode="RGB").resize((rw, rh), resample), dtype=np.uint8)
    rescale = float(processor_config.get("rescale_factor", 1 / 255))
    mean = np.asarray(processor_config.get("image_mean", [0.5, 0.5, 0.5]), dtype=np.float64) / rescale
    std = np.asarray(processor_config.get("image_std", [0.5, 0.5, 0.5]), dtype=np.float64) / rescale
    x = (image.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)  # (H, W, 3) float32
    x = x.transpose(2, 0, 1)[None].repeat(tp, axis=0)  # (tp, 3, H, W) float32: the frame repeated
    gh, gw = rh // ps, rw // ps
    patches = x.reshape(1, tp, 3, gh // ms, ms, ps, gw // ms, ms, ps)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, 3, tp, ps, ps)
    pixel_values = np.ascontiguousarray(patches.reshape(gh * gw, 3 * tp * ps * ps), dtype=np.float32)
    grid = np.asarray([[1, gh, gw]], dtype=np.int64)  # (1, 3) int64
    return pixel_values, grid


def num_image_tokens(grid_thw: NDArray[np.int64], merge_size: int) -> int:
    """Merged vision tokens the LM sees for one image: t·h·w / merge²."""
    t, h, w = (int(v) for v in grid_thw[0])
    return t * h * w // (merge_size * merge_size)
