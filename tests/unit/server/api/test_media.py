"""Upload decoding (limits before decoding), output encoding with the recipe, previews."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model_runtime.recipe import read_recipe, rgb8_sha256
from server.api.media import decode_base64_image, decode_upload, encode_output, encode_preview
from server.engine.job import OutputOptions
from server.errors import InvalidRequestError, PayloadTooLargeError


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 7, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _header_only_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    chunk = b"IDAT" + idat
    data += struct.pack(">I", len(idat)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def test_decode_upload_returns_pixels_and_their_hash() -> None:
    pixels, sha = decode_upload(_png(5, 3), max_bytes=10_000, max_pixels=100)
    assert pixels.shape == (3, 5, 3)
    assert sha == rgb8_sha256(pixels)


def test_limits_are_checked_before_decoding() -> None:
    with pytest.raises(PayloadTooLargeError):
        decode_upload(_png(5, 3), max_bytes=10, max_pixels=100)
    with pytest.raises(PayloadTooLargeError) as info:
        decode_upload(_header_only_png(2_000, 2_000), max_bytes=10_000, max_pixels=100)
    assert info.value.code == "image_too_many_pixels"
    with pytest.raises(InvalidRequestError):
        decode_upload(b"GIF89a....", max_bytes=10_000, max_pixels=100)


def test_base64_and_data_urls() -> None:
    raw = _png(2, 2)
    assert decode_base64_image(base64.b64encode(raw).decode(), max_bytes=10_000) == raw
    assert (
        decode_base64_image("data:image/png;base64," + base64.b64encode(raw).decode(), max_bytes=10_000)
        == raw
    )
    with pytest.raises(InvalidRequestError):
        decode_base64_image("not base64!", max_bytes=10_000)
    with pytest.raises(PayloadTooLargeError):
        decode_base64_image(base64.b64encode(b"x" * 5000).decode(), max_bytes=1000)


def test_png_embeds_the_recipe_unless_stripped() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    data = encode_output(image, {"seed": 1}, OutputOptions())
    assert read_recipe(data) == {"seed": 1}
    assert read_recipe(encode_output(image, {"seed": 1}, OutputOptions(embed_metadata=False))) is None
    assert encode_output(image, {}, OutputOptions(format="jpeg")).startswith(b"\xff\xd8")


def test_preview_is_a_small_jpeg_at_latent_resolution() -> None:
    fmt, data = encode_preview(np.random.default_rng(0).standard_normal((4, 8, 6)).astype(np.float32))
    assert fmt == "jpeg"
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        assert img.size == (6, 8)
