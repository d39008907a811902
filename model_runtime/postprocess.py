"""Stage ⑥ postprocess: decoded VAE output → RGB8, as the official ``VaeImageProcessor`` does it.

``(x/2 + 0.5).clamp(0, 1)`` in the compute dtype, then float32, ``·255``, round half to even, uint8, NHWC.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_runtime.dtypes import DType, round_to


def to_uint8(decoded: NDArray[np.float32], dtype: DType = "float32") -> NDArray[np.uint8]:
    """Convert decoder output in [−1, 1] to uint8 images.

    Args:
        decoded: ``(B, 3, H, W)`` float32 holding values of ``dtype``.
        dtype: Compute dtype of the decoder.

    Returns:
        ``(B, H, W, 3)`` uint8.
    """
    x = round_to(decoded / np.float32(2.0), dtype)
    x = round_to(x + np.float32(0.5), dtype)
    x = np.clip(x, np.float32(0.0), np.float32(1.0))  # (B, 3, H, W) float32
    x = x.transpose(0, 2, 3, 1) * np.float32(255.0)  # (B, H, W, 3) float32
    return np.round(x).astype(np.uint8)
