"""Stage ② inputs: VLM pixels, VAE input, resizes and image decoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from model_runtime.errors import InvalidInputError
from model_runtime.preprocess import decode_image, resize_lanczos, smart_resize, vae_input, vlm_inputs
from tests.conftest import CASES, TINY_MODEL

EDIT = CASES / "edit_1024"
PROCESSOR = json.loads((TINY_MODEL / "processor" / "preprocessor_config.json").read_text())


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(EDIT / name).convert("RGB"))


def test_resizes_match_the_official_images() -> None:
    source = rgb("source.png")
    np.testing.assert_array_equal(resize_lanczos(source, (256, 256)), rgb("source_vlm_256.png"))
    np.testing.assert_array_equal(resize_lanczos(source, (1024, 1024)), rgb("source_vae_1024.png"))


def test_vlm_pixels_are_bit_exact() -> None:
    pixels, grid = vlm_inputs(rgb("source_vlm_256.png"), PROCESSOR)
    np.testing.assert_array_equal(pixels, np.load(EDIT / "vlm_pixel_values.npy"))
    np.testing.assert_array_equal(grid, np.load(EDIT / "image_grid_thw.npy"))


def test_smart_resize_rule() -> None:
    # 224² grows to 256² (min_pixels 65536, factor 32): the reason 224 and 256 give the same 16×16 grid.
    assert smart_resize(224, 224, 32, 65536, 16777216) == (256, 256)
    assert smart_resize(256, 256, 32, 65536, 16777216) == (256, 256)
    assert smart_resize(512, 512, 32, 65536, 16777216) == (512, 512)
    with pytest.raises(InvalidInputError):
        smart_resize(1, 300, 32, 65536, 16777216)


def test_vae_input_formula() -> None:
    image = rgb("source_vae_1024.png")
    x = vae_input(image)
    assert x.shape == (3, 1024, 1024)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, (image.astype(np.float32) / 255.0 * 2.0 - 1.0).transpose(2, 0, 1))


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_image_converts_to_rgb() -> None:
    for mode in ("RGBA", "L", "P", "RGB"):
        out = decode_image(png_bytes(5, 3, mode))
        assert out.shape == (3, 5, 3)
        assert out.dtype == np.uint8


def test_decode_image_rejects_garbage_and_oversized() -> None:
    with pytest.raises(InvalidInputError, match="not a readable image"):
        decode_image(b"not an image")
    with pytest.raises(InvalidInputError, match="too many pixels") as info:
        decode_image(png_bytes(300, 200), max_pixels=10_000)
    assert info.value.field == "image"
