r"""Parity ⑧ trace: canonical tensor bytes, their SHA-256, summary statistics and a projection fingerprint.

* **Canonical bytes** of a tensor: ``b"dreamlite-tensor/1\\0" + dtype + b"\\0" + shape + b"\\0" + data``,
  with dtype a numpy name (``float32``, ``int64``, ``uint8``), shape as comma-separated decimal sizes and
  data little-endian, C order. Equal hashes mean equal dtype, shape and every bit.
* **Statistics**: count, min, max, mean, std, L2 norm (float64 arithmetic) — cheap sanity signals.
* **Fingerprint**: ``K = 32`` dot products of the flattened tensor (float64) with fixed ±1 vectors. The
  sign of element ``i`` in projection ``k`` is bit ``k`` of Philox4x32-10 word ``i mod 4`` of block ``i // 4``
  with key ``FINGERPRINT_KEY`` and counter ``(block lo, block hi, FINGERPRINT_STREAM, 0)`` (bit 1 → −1).
  For two tensors of the same shape, ``‖f(a) − f(b)‖ / √K`` estimates ``‖a − b‖`` (Johnson–Lindenstrauss:
  each ±1 projection of the difference has expectation ``‖a − b‖²`` when squared), so a server can estimate
  how far a phone's tensor is from its own without the tensor being uploaded.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.noise_dln1 import philox4x32_10

TENSOR_HASH_PREFIX = b"dreamlite-tensor/1\0"
FINGERPRINT_DIM = 32
FINGERPRINT_KEY = (0x44524C54, 0x46505231)  # "DRLT", "FPR1"
FINGERPRINT_STREAM = 0x46494E47  # "FING"


def canonical_bytes(array: NDArray[Any]) -> bytes:
    """The canonical byte string of a tensor (header + little-endian C-order data)."""
    a = np.ascontiguousarray(array)
    dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    data = a.astype(dtype, copy=False).tobytes(order="C")
    header = f"{a.dtype.name}\0{','.join(str(s) for s in a.shape)}\0".encode()
    return TENSOR_HASH_PREFIX + header + data


def tensor_sha256(array: NDArray[Any]) -> str:
    """SHA-256 of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(array)).hexdigest()


def tensor_stats(array: NDArray[Any]) -> dict[str, float]:
    """count, min, max, mean, std and L2 norm in float64."""
    x = np.asarray(array, dtype=np.float64).ravel()
    if x.size == 0:
        return {"count": 0.0, "min": 0.0, "max": 0.0, "mean": 0.0, "std": 0.0, "l2": 0.0}
    return {
        "count": float(x.size),
        "min": float(x.min()),
        "max": float(x.max()),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "l2": float(math.sqrt(float(np.dot(x, x)))),
    }


def _sign_words(n: int) -> NDArray[np.uint32]:
    blocks = (n + 3) // 4
    b = np.arange(blocks, dtype=np.uint64)
    counter = np.zeros((blocks, 4), dtype=np.uint32)  # (blocks, 4) uint32
    counter[:, 0] = (b & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    counter[:, 1] = (b >> np.uint64(32)).astype(np.uint32)
    counter[:, 2] = FINGERPRINT_STREAM
    return philox4x32_10(counter, FINGERPRINT_KEY).reshape(-1)[:n]  # (n,) uint32


def fingerprint(array: NDArray[Any]) -> list[float]:
    """``K = 32`` ±1 projections of the flattened tensor (see the module docstring)."""
    x = np.asarray(array, dtype=np.float64).ravel()  # (n,) float64
    words = _sign_words(x.size)
    bits = (words[:, None] >> np.arange(FINGERPRINT_DIM, dtype=np.uint32)[None, :]) & np.uint32(1)  # (n, K)
    signs = 1.0 - 2.0 * bits.astype(np.float64)  # (n, K) ±1
    return [float(v) for v in x @ signs]


def estimated_l2(fp_a: list[float], fp_b: list[float]) -> float:
    """Estimate ``‖a − b‖`` from two fingerprints of same-shape tensors."""
    d = np.asarray(fp_a, dtype=np.float64) - np.asarray(fp_b, dtype=np.float64)
    return float(math.sqrt(float(np.dot(d, d)) / len(d)))
