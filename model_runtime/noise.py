"""Stage ⑤ noise: the initial latent of a sample, from a named, seeded source.

* ``torch-cpu`` — ``torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=…)``, what
  the official pipeline draws (one generator per sample, so a sample's noise does not depend on its batch).
  Needs torch; bit-identical to the official seeds on the same torch build.
* ``dln1`` — the project's portable generator (Philox4x32-10 + Box–Muller from IEEE basic operations;
  ``docs/noise-dln1.md``), bit-identical in Python, C and Java, drawn in float32 then rounded to the
  compute dtype.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_runtime.dtypes import DType, round_to
from model_runtime.errors import BackendUnavailableError, InvalidInputError
from model_runtime.types import NOISE_SOURCES, SEED_MAX, NoiseSource


def check_seed(seed: int) -> int:
    """Validate a seed (an integer in 0 … 2**64 − 1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InvalidInputError("seed", "must be an integer in range.", allowed=f"0 … {SEED_MAX}", given=seed)
    return seed


def initial_noise(
    source: NoiseSource, seed: int, shape: tuple[int, ...], dtype: DType
) -> NDArray[np.float32]:
    """Draw the initial latent of one sample.

    Args:
        source: ``torch-cpu`` or ``dln1``.
        seed: 0 … 2**64 − 1.
        shape: Latent shape, ``(1, 4, H/8, W/8)``.
        dtype: Compute dtype; the values are representable in it.

    Returns:
        float32 array of ``shape``.
    """
    check_seed(seed)
    if source == "torch-cpu":
        try:
            import torch
        except ImportError as err:  # pragma: no cover - torch is a core dependency
            raise BackendUnavailableError("noise `torch-cpu` needs torch; use `dln1` instead") from err
        generator = torch.Generator("cpu").manual_seed(seed)
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        draw = torch.randn(shape, generator=generator, dtype=torch_dtype)  # (1, 4, h, w) dtype
        return draw.to(torch.float32).numpy()
    if source == "dln1":
        from model_runtime.noise_dln1 import dln1_normal

        return round_to(dln1_normal(seed, shape), dtype)  # (1, 4, h, w) float32
    raise InvalidInputError.one_of("noise", NOISE_SOURCES, source)
