"""Compute-dtype emulation for the backend-neutral pipeline (stages ⑤ and ⑥).

The pipeline keeps every array it owns in float32 numpy. When a backend computes in bfloat16 or float16,
the official pipeline rounds latents, timesteps and text features to that dtype at fixed points (it casts
with ``.to(dtype)``). These helpers do that rounding on float32 arrays, bit-exactly: the result is the
float32 value of the nearest representable number in the compute dtype (round half to even), which is
exactly what ``torch.Tensor.to(torch.bfloat16).float()`` gives.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

DType = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[DType, ...] = get_args(DType)


def round_to(x: NDArray[np.float32], dtype: DType) -> NDArray[np.float32]:
    """Round float32 values to the nearest value of ``dtype`` (ties to even), returned as float32.

    Args:
        x: Any float32 array.
        dtype: The compute dtype.

    Returns:
        A new float32 array (or ``x`` itself for float32).
    """
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    return _round_bf16(x)


def _round_bf16(x: NDArray[np.float32]) -> NDArray[np.float32]:
    a = np.ascontiguousarray(x, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)  # (...) uint64 so the carry cannot overflow
    lsb = (bits >> np.uint64(16)) & np.uint64(1)
    rounded = ((bits + np.uint64(0x7FFF) + lsb) & np.uint64(0xFFFF0000)).astype(np.uint32)
    out = rounded.view(np.float32).copy()
    nan = np.isnan(a)
    if nan.any():
        out[nan] = np.float32(np.nan)
    return out


def check_dtype(dtype: str) -> DType:
    """Validate a dtype name.

    Raises:
        InvalidInputError: When ``dtype`` is not one of float32, bfloat16, float16.
    """
    from model_runtime.errors import InvalidInputError

    if dtype not in DTYPES:
        raise InvalidInputError.one_of("dtype", DTYPES, dtype)
    return dtype
