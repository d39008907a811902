"""Stage ⑤ noise: the torch-cpu source reproduces the official seeds; sources are validated."""

from __future__ import annotations

import numpy as np
import pytest

from model_runtime.errors import InvalidInputError
from model_runtime.noise import initial_noise
from model_runtime.noise_dln1 import dln1_normal
from tests.conftest import CASES


@pytest.mark.parametrize(
    ("case", "seed", "shape"),
    [
        ("gen_256", 42, (1, 4, 32, 32)),
        ("gen_320x192", 1234, (1, 4, 24, 40)),
        ("edit_1024", 7, (1, 4, 128, 128)),
    ],
)
def test_torch_cpu_is_the_official_draw(case: str, seed: int, shape: tuple[int, ...]) -> None:
    np.testing.assert_array_equal(
        initial_noise("torch-cpu", seed, shape, "float32"), np.load(CASES / case / "noise.npy")
    )


def test_dln1_source_and_dtype_rounding() -> None:
    np.testing.assert_array_equal(
        initial_noise("dln1", 42, (1, 4, 8, 8), "float32"), dln1_normal(42, (1, 4, 8, 8))
    )
    half = initial_noise("dln1", 42, (1, 4, 8, 8), "float16")
    np.testing.assert_array_equal(half, dln1_normal(42, (1, 4, 8, 8)).astype(np.float16).astype(np.float32))


def test_bad_sources_and_seeds() -> None:
    with pytest.raises(InvalidInputError, match="`noise`"):
        initial_noise("numpy", 0, (1, 4, 8, 8), "float32")  # type: ignore[arg-type]
    for seed in (-1, 2**64, 1.5, True):
        with pytest.raises(InvalidInputError, match="`seed`"):
            initial_noise("torch-cpu", seed, (1, 4, 8, 8), "float32")  # type: ignore[arg-type]
    assert initial_noise("torch-cpu", 2**64 - 1, (1, 4, 2, 2), "float32").shape == (1, 4, 2, 2)
