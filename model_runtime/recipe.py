"""Stage ⑦ output: an image's recipe and its encoding (PNG with the recipe as text metadata, JPEG, WebP).

The recipe is everything that determines the image's bits: model and weights hash, backend, provider,
dtype, task, seed, noise source, steps, sigmas, sizes, batch size, and the SHA-256 of the RGB8 pixels.
The CLI and the server write the same recipe the same way, so a server image and a CLI image of the same
request can be compared by their pixel hashes and their recipes.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from PIL.PngImagePlugin import PngInfo

if TYPE_CHECKING:
    from model_runtime.pipeline import Pipeline
    from model_runtime.types import SampleResult

ImageFormat = Literal["png", "jpeg", "webp"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("png", "jpeg", "webp")
RECIPE_KEY = "dreamlite:recipe"


def rgb8_sha256(image: NDArray[np.uint8]) -> str:
    """SHA-256 of decoded RGB8 pixels, row-major H×W×3 (the conformance hashing rule)."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


def build_recipe(result: SampleResult, pipeline: Pipeline, **extra: Any) -> dict[str, Any]:
    """The JSON recipe of one result.

    Args:
        result: A succeeded sample.
        pipeline: The pipeline that made it.
        **extra: More fields (the server adds job id, bundle/graph ids …).
    """
    info = pipeline.backend.info
    r = result.recipe
    recipe: dict[str, Any] = {
        "model_id": pipeline.config.model_id,
        "weights_sha256": pipeline.backend.artifact_sha256(),
        "backend": info.name,
        "provider": info.provider,
        "device": info.device,
        "dtype": r.dtype,
        "task": r.task,
        "seed": r.seed,
        "noise": r.noise,
        "steps": r.steps,
        "sigmas": list(r.sigmas),
        "timesteps": list(r.timesteps),
        "size": f"{r.width}x{r.height}",
        "working_size": f"{r.working_width}x{r.working_height}",
        "batch_size": r.batch_size,
    }
    if r.guidance_scale is not None:
        recipe["guidance_scale"] = r.guidance_scale
    if r.image_guidance_scale is not None:
        recipe["image_guidance_scale"] = r.image_guidance_scale
    for key in ("bundle_id", "graph_sha256", "target"):
        if key in info.details:
            recipe[key] = info.details[key]
    if result.image is not None:
        recipe["rgb8_sha256"] = rgb8_sha256(result.image)
    recipe.update(extra)
    return recipe


def encode_image(
    image: NDArray[np.uint8],
    fmt: ImageFormat = "png",
    *,
    recipe: dict[str, Any] | None = None,
    quality: int = 95,
) -> bytes:
    """Encode RGB8 pixels; a PNG carries the recipe as an iTXt chunk ``dreamlite:recipe``.

    Args:
        image: ``(H, W, 3)`` uint8.
        fmt: ``png``, ``jpeg`` or ``webp``.
        recipe: Metadata to embed (PNG only; None strips it).
        quality: JPEG/WebP quality 0–100 (PNG is lossless and ignores it).
    """
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    buffer = io.BytesIO()
    if fmt == "png":
        info = None
        if recipe is not None:
            info = PngInfo()
            info.add_itxt(RECIPE_KEY, json.dumps(recipe, sort_keys=True))
        pil.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    elif fmt == "jpeg":
        pil.save(buffer, format="JPEG", quality=quality)
    else:
        pil.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


def read_recipe(png: bytes) -> dict[str, Any] | None:
    """The recipe embedded in a PNG by :func:`encode_image`, or None."""
    with Image.open(io.BytesIO(png)) as img:
        text = getattr(img, "text", {}).get(RECIPE_KEY)
    if text is None:
        return None
    data: dict[str, Any] = json.loads(text)
    return data
