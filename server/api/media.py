"""Stage ① and ⑦ media: decoding uploads safely, encoding outputs and step previews.

* Uploads: the byte limit is checked before decoding (413); the pixel count is read from the image
  header before any pixel data is decoded, so decompression bombs are refused cheaply (413); unreadable
  data is a 400. Decoding itself is ``model_runtime.preprocess.decode_image`` (EXIF transpose, RGB),
  the same as the CLI.
* Outputs: ``model_runtime.recipe.encode_image`` (PNG with the recipe as iTXt ``dreamlite:recipe``, JPEG,
  WebP) — one encoder for the CLI and the server.
* Previews: a latent → RGB projection at latent resolution (1/8 of the output side), as a small JPEG.

These functions are CPU-bound and are called from thread pools, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from model_runtime.errors import InvalidInputError
from model_runtime.preprocess import decode_image
from model_runtime.recipe import encode_image, rgb8_sha256
from server.engine.job import OutputOptions
from server.errors import InvalidRequestError, PayloadTooLargeError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(?P<params>(;[\w=.-]+)*);base64,", re.IGNORECASE)
# Approximate TAESD-latent → RGB projection (rows: latent channels) for previews only.
_LATENT_RGB = np.asarray(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]],
    dtype=np.float32,
)


def decode_base64_image(text: str, *, max_bytes: int, param: str = "image") -> bytes:
    """Bytes of a base64 string or ``data:`` URL, enforcing the upload limit before decoding.

    Raises:
        PayloadTooLargeError: Larger than ``max_bytes``.
        InvalidRequestError: Not base64.
    """
    match = _DATA_URL.match(text)
    payload = text[match.end() :] if match else text
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise PayloadTooLargeError(
            f"`{param}` is larger than the upload limit of {max_bytes} bytes.",
            param=param,
            code="image_too_large",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidRequestError.field(
            param,
            "is not valid base64 or a data URL.",
            allowed="base64 PNG/JPEG/WebP",
            given=f"{len(text)} characters",
        ) from err


def decode_upload(
    data: bytes, *, max_bytes: int, max_pixels: int, param: str = "image"
) -> tuple[NDArray[np.uint8], str]:
    """Decode an edit source safely.

    Args:
        data: The encoded file.
        max_bytes: Upload limit.
        max_pixels: Largest width·height (checked from the header first).
        param: Field name for errors.

    Returns:
        ``(H, W, 3)`` uint8 pixels and the SHA-256 of their RGB8 bytes.

    Raises:
        PayloadTooLargeError: Too many bytes or pixels.
        InvalidRequestError: Not a readable PNG/JPEG/WebP.
    """
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"`{param}` is {len(data)} bytes; the limit is {max_bytes}.", param=param, code="image_too_large"
        )
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
            fmt = probe.format
    except Image.DecompressionBombError as err:  # Pillow's own header check (far above our limit)
        raise PayloadTooLargeError(
            f"`{param}` has far too many pixels; the limit is {max_pixels}.",
            param=param,
            code="image_too_many_pixels",
        ) from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InvalidRequestError.field(
            param, "is not a readable image.", allowed="PNG, JPEG or WebP", given=f"{len(data)} bytes"
        ) from err
    if fmt not in ("PNG", "JPEG", "WEBP", "MPO"):
        raise InvalidRequestError.field(
            param, "has an unsupported format.", allowed="PNG, JPEG or WebP", given=fmt
        )
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"`{param}` is {width}x{height} = {width * height} pixels; the limit is {max_pixels}.",
            param=param,
            code="image_too_many_pixels",
        )
    try:
        pixels = decode_image(data, max_pixels=max_pixels, field=param)
    except InvalidInputError as err:
        raise InvalidRequestError(str(err), param=param) from err
    return pixels, rgb8_sha256(pixels)


def encode_output(image: NDArray[np.uint8], recipe: dict[str, Any], options: OutputOptions) -> bytes:
    """The file of one output image (PNG embeds the recipe unless ``metadata: strip``)."""
    embed = options.embed_metadata and options.format == "png"
    return encode_image(image, options.format, recipe=recipe if embed else None, quality=options.quality)


def encode_preview(latents: NDArray[np.float32]) -> tuple[str, str]:
    """A JPEG preview of ``(4, h, w)`` latents at latent resolution, base64."""
    rgb = np.tensordot(latents.transpose(1, 2, 0), _LATENT_RGB, axes=1)  # (h, w, 3) float32
    low, high = float(rgb.min()), float(rgb.max())
    scaled = (rgb - low) / (high - low + 1e-6) * 255.0
    pixels = np.clip(scaled, 0, 255).astype(np.uint8)  # (h, w, 3) uint8
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=70)
    return "jpeg", base64.b64encode(buffer.getvalue()).decode()
