"""Stage ⑤ noise: DLN-1, the portable seeded Gaussian noise, as a vectorised numpy reference.

DLN-1 turns a 64-bit seed, a 32-bit stream number and a shape into float32 standard normals that are
bit-identical in every language that follows ``docs/noise-dln1.md``: the server (this module), the C port
and the Java port under ``ports/dln1/``, and any Swift/Kotlin port checked against the golden vectors.

How the bits stay portable:

* the integer layer is Philox4x32-10 (a pure function of counter and key), so element ``i`` depends only
  on ``(seed, stream, i)`` and never on chunking or batching;
* the float layer uses only IEEE-754 float64 ``+ - * /`` and ``sqrt`` (each correctly rounded), exact bit
  operations and exact conversions, applied in the order the spec gives; ``ln``, ``sin`` and ``cos`` are
  fixed-length polynomials, never libm. numpy never fuses ``a * b + c`` into one operation, so every line
  below is exactly one rounding.

Golden vectors ship as ``model_runtime/assets/dln1_golden.json`` (rewritten by
``scripts/gen_dln1_golden.py``). A port proves itself by printing the same JSON document from its own
code; :func:`verify_vectors` compares such a candidate against the golden file (this is what
``dreamlite parity vectors --file my_port_output.json`` calls).

Golden / candidate file format (JSON object)::

    {
      "spec_version": "DLN-1",
      "generated_by": "<free text naming the implementation>",
      "philox4x32_10_kat": [
        {"name": "zeros",
         "counter": ["00000000", "00000000", "00000000", "00000000"],
         "key": ["00000000", "00000000"],
         "output": ["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]},
        ...
      ],
      "normal": [
        {"name": "seed0_first16", "seed": "0", "stream": 0, "shape": [16],
         "float32_hex": ["3f7dbb33", ...],
         "float64_hex": ["3fefb76...", ...],
         "sha256": "<64 hex digits>",
         "sha256_float64": "<64 hex digits>"},
        ...
      ]
    }

Words and float32 values are 8 lowercase hex digits of the bit pattern, float64 values 16 (the verifier
also accepts upper case). ``seed`` is a decimal string because a uint64 does not fit the exact range of
many JSON parsers (JavaScript numbers, signed 64-bit integers). ``float32_hex`` lists every element of the
case in row-major order and ``float64_hex`` the same elements before the float32 cast; both are present
only for small cases (at most :data:`LISTED_VALUES_MAX` elements). ``sha256`` is the SHA-256 of all
elements as little-endian float32 bytes and ``sha256_float64`` of the float64 values as little-endian
float64 bytes; both are present for every case. The float64 fields catch a port that breaks a build rule
(see :func:`dln1_normal_float64`).
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "GOLDEN_CASES",
    "GOLDEN_PATH",
    "PHILOX_KATS",
    "SPEC_VERSION",
    "GoldenCase",
    "PhiloxKat",
    "dln1_normal",
    "dln1_normal_float64",
    "golden_json_text",
    "golden_vectors",
    "load_golden_file",
    "philox4x32_10",
    "verify_vectors",
]

SPEC_VERSION: Final = "DLN-1"
"""Value of ``spec_version`` in golden and candidate files."""

GOLDEN_PATH: Final = Path(__file__).resolve().parent / "assets" / "dln1_golden.json"
"""The shipped golden-vector file."""

LISTED_VALUES_MAX: Final = 64
"""Cases with at most this many elements list every value in ``float32_hex``."""

GENERATED_BY: Final = "model_runtime/noise_dln1.py (numpy reference; rewrite with scripts/gen_dln1_golden.py)"

# ------------------------------------------------------------------ constants of the spec
_MASK32: Final = 0xFFFFFFFF
_UINT64_MAX: Final = 2**64 - 1
_UINT32_MAX: Final = 2**32 - 1

PHILOX_M0: Final = 0xD2511F53
PHILOX_M1: Final = 0xCD9E8D57
PHILOX_W0: Final = 0x9E3779B9
PHILOX_W1: Final = 0xBB67AE85
PHILOX_ROUNDS: Final = 10

HALF_PI: Final = float.fromhex("0x1.921fb54442d18p+0")  # nearest double to π/2
LN2: Final = float.fromhex("0x1.62e42fefa39efp-1")  # nearest double to ln 2
SQRT_HALF: Final = float.fromhex("0x1.6a09e667f3bcdp-1")  # nearest double to √½
TWO_POW_M32: Final = float.fromhex("0x1p-32")
TWO_POW_M30: Final = float.fromhex("0x1p-30")


def _ln_coefficients() -> tuple[float, ...]:
    """c_k = 1.0 / (2k + 1) for k = 0..10, each one correctly rounded division."""
    return tuple(1.0 / float(2 * k + 1) for k in range(11))


def _inverse_factorials() -> tuple[float, ...]:
    """inv[0] = 1, inv[n] = inv[n-1] / n for n = 1..23, divisions in that order."""
    inv = [1.0]
    for n in range(1, 24):
        inv.append(inv[-1] / float(n))
    return tuple(inv)


LN_COEFFS: Final = _ln_coefficients()
_INV: Final = _inverse_factorials()
SIN_COEFFS: Final = tuple((-1.0) ** j * _INV[2 * j + 1] for j in range(12))  # sign flip is exact
COS_COEFFS: Final = tuple((-1.0) ** j * _INV[2 * j] for j in range(12))


# ------------------------------------------------------------------ Philox4x32-10
def _uint_argument(value: object, name: str, bits: int) -> int:
    """Return ``value`` as a Python int after checking it is an unsigned ``bits``-bit integer."""
    upper = 2**bits - 1
    allowed = f"Allowed: 0 … {upper} (2**{bits} − 1)"
    if isinstance(value, bool | float) or not hasattr(value, "__index__"):
        raise TypeError(f"`{name}` must be an integer. {allowed}. Given: {value!r}.")
    number = operator.index(value)
    if not 0 <= number <= upper:
        raise ValueError(f"`{name}` must be a uint{bits}. {allowed}. Given: {number}.")
    return number


def _uint32_words(values: ArrayLike, name: str) -> NDArray[np.uint64]:
    """Check that ``values`` holds integers in [0, 2**32) and return them widened to uint64."""
    arr = np.asarray(values)
    if arr.dtype == np.uint32:
        return arr.astype(np.uint64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"`{name}` must hold unsigned 32-bit integers; got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > _MASK32):
        raise ValueError(f"`{name}` words must be in [0, 2**32 - 1]; got values outside that range")
    return arr.astype(np.uint64)


def philox4x32_10(counter: NDArray[np.uint32], key: tuple[int, int] | NDArray[Any]) -> NDArray[np.uint32]:
    """Philox4x32-10 block function (Salmon et al., SC'11; Random123), vectorised over blocks.

    Each of the 10 rounds maps the words (x0, x1, x2, x3) with key (k0, k1) to
    ``(hi(M1·x2) ^ x1 ^ k0, lo(M1·x2), hi(M0·x0) ^ x3 ^ k1, lo(M0·x0))``, with
    M0 = 0xD2511F53, M1 = 0xCD9E8D57 and 32×32→64-bit products; before rounds 2..10 the key is bumped by
    (0x9E3779B9, 0xBB67AE85) modulo 2**32.

    Args:
        counter: uint32 array of shape (..., 4), one 128-bit counter per block (word 0 first).
        key: (k0, k1) as two ints in [0, 2**32), or an integer array of shape (2,) or (..., 2) that
            broadcasts against ``counter[..., 0]``.

    Returns:
        uint32 array of shape (..., 4): the four output words of each block.

    Raises:
        ValueError: if ``counter`` does not end in a dimension of 4, ``key`` does not end in a dimension
            of 2, or a word is outside [0, 2**32).
        TypeError: if a word is not an integer.
    """
    ctr = _uint32_words(counter, "counter")  # (..., 4) uint64
    if ctr.ndim == 0 or ctr.shape[-1] != 4:
        raise ValueError(f"`counter` must have shape (..., 4); got {ctr.shape}")
    if isinstance(key, tuple):
        if len(key) != 2:
            raise ValueError(f"`key` must be (k0, k1); got {len(key)} values")
        key_words = np.array(
            [_uint_argument(key[0], "key[0]", 32), _uint_argument(key[1], "key[1]", 32)], dtype=np.uint64
        )  # (2,)
    else:
        key_words = _uint32_words(key, "key")  # (..., 2) uint64
        if key_words.ndim == 0 or key_words.shape[-1] != 2:
            raise ValueError(f"`key` must have shape (..., 2); got {key_words.shape}")

    mask = np.uint64(_MASK32)
    shift = np.uint64(32)
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    k0 = key_words[..., 0]  # (...,) uint64, always < 2**32
    k1 = key_words[..., 1]  # (...,)
    x0, x1, x2, x3 = ctr[..., 0], ctr[..., 1], ctr[..., 2], ctr[..., 3]  # (...,) uint64, < 2**32
    for round_index in range(PHILOX_ROUNDS):
        if round_index > 0:
            k0 = (k0 + np.uint64(PHILOX_W0)) & mask
            k1 = (k1 + np.uint64(PHILOX_W1)) & mask
        p0 = m0 * x0  # (...,) uint64: exact 64-bit product of two 32-bit words
        p1 = m1 * x2  # (...,)
        x0, x1, x2, x3 = (p1 >> shift) ^ x1 ^ k0, p1 & mask, (p0 >> shift) ^ x3 ^ k1, p0 & mask
    out = np.stack(np.broadcast_arrays(x0, x1, x2, x3), axis=-1)  # (..., 4) uint64, < 2**32
    return out.astype(np.uint32)


# ------------------------------------------------------------------ Gaussian transform
# Shape comments: (B, 2) = B Philox blocks × 2 word pairs, as dln1_normal calls these (any shape works).
def _ln_unit(u: NDArray[np.float64]) -> NDArray[np.float64]:
    """Natural log of u in (0, 1) with basic operations only (spec step 4)."""
    m, e = np.frexp(u)  # u = m · 2**e exactly, m in [0.5, 1); (B, 2) float64, (B, 2) int32
    fold = m < SQRT_HALF  # (B, 2) bool
    m = np.where(fold, m * 2.0, m)  # (B, 2) float64, now in [√½, √2); doubling is exact
    e_f = (e - fold).astype(np.float64)  # (B, 2) float64, exact small integers
    s = (m - 1.0) / (m + 1.0)  # (B, 2) float64
    t = s * s  # (B, 2)
    p = np.full_like(t, LN_COEFFS[10])  # (B, 2)
    for k in range(9, -1, -1):
        p *= t  # one rounding
        p += LN_COEFFS[k]  # a second, separate rounding (no FMA)
    ln_m = 2.0 * (s * p)  # (B, 2)
    return e_f * LN2 + ln_m  # (B, 2): product and sum rounded separately


def _sin_cos(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(sin x, cos x) for x in (0, π/2) by fixed-length Horner (spec step 6)."""
    t = x * x  # (B, 2) float64
    s_acc = np.full_like(t, SIN_COEFFS[11])  # (B, 2)
    c_acc = np.full_like(t, COS_COEFFS[11])  # (B, 2)
    for j in range(10, -1, -1):
        s_acc *= t
        s_acc += SIN_COEFFS[j]
        c_acc *= t
        c_acc += COS_COEFFS[j]
    return x * s_acc, c_acc  # (B, 2), (B, 2)


def _normal_pairs(
    a: NDArray[np.uint32], b: NDArray[np.uint32]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Box–Muller on word pairs: ``a`` gives the radius, ``b`` the angle (spec steps 3-6).

    Args:
        a: uint32 array, the first word of each pair (x0 or x2).
        b: uint32 array of the same shape, the second word of each pair (x1 or x3).

    Returns:
        (z0, z1) float64 arrays of the same shape: z0 = r·cos φ goes to the even slot, z1 = r·sin φ to
        the odd slot.
    """
    u = (a.astype(np.float64) + 0.5) * TWO_POW_M32  # (B, 2) float64 in (0, 1), exact
    r = np.sqrt(-2.0 * _ln_unit(u))  # (B, 2) float64, correctly rounded sqrt
    quadrant = b >> np.uint32(30)  # (B, 2) uint32 in 0..3
    f = ((b & np.uint32(0x3FFFFFFF)).astype(np.float64) + 0.5) * TWO_POW_M30  # (B, 2) in (0, 1), exact
    sin_t, cos_t = _sin_cos(f * HALF_PI)  # (B, 2), (B, 2); θ in (0, π/2)
    odd = (quadrant & np.uint32(1)).astype(bool)  # (B, 2) quadrants 1 and 3 swap sin and cos
    c_rot = np.where(odd, sin_t, cos_t)  # (B, 2)
    s_rot = np.where(odd, cos_t, sin_t)  # (B, 2)
    c_rot = np.where((quadrant == 1) | (quadrant == 2), -c_rot, c_rot)  # (B, 2) negation is exact
    s_rot = np.where(quadrant >= 2, -s_rot, s_rot)  # (B, 2)
    return r * c_rot, r * s_rot


def _shape_argument(shape: object) -> tuple[int, ...]:
    """Validate ``shape`` as a tuple of non-negative ints."""
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
        raise TypeError(f"`shape` must be a tuple of non-negative ints; got {shape!r}")
    dims: list[int] = []
    for dim in shape:
        if isinstance(dim, bool | float) or not hasattr(dim, "__index__"):
            raise TypeError(f"`shape` must be a tuple of non-negative ints; got {shape!r}")
        size = operator.index(dim)
        if size < 0:
            raise ValueError(f"`shape` dimensions must be >= 0; got {tuple(shape)!r}")
        dims.append(size)
    return tuple(dims)


def _draw_float64(seed: object, shape: object, stream: object) -> tuple[NDArray[np.float64], tuple[int, ...]]:
    """Validate the arguments and return the flat float64 values z (before the cast) and the shape."""
    seed_int = _uint_argument(seed, "seed", 64)
    stream_int = _uint_argument(stream, "stream", 32)
    dims = _shape_argument(shape)
    n = math.prod(dims)
    n_blocks = (n + 3) // 4
    block = np.arange(n_blocks, dtype=np.uint64)  # (B,) uint64
    counter = np.empty((n_blocks, 4), dtype=np.uint32)  # (B, 4)
    counter[:, 0] = block & np.uint64(_MASK32)
    counter[:, 1] = block >> np.uint64(32)
    counter[:, 2] = stream_int
    counter[:, 3] = 0
    words = philox4x32_10(counter, (seed_int & _MASK32, seed_int >> 32))  # (B, 4) uint32
    z0, z1 = _normal_pairs(words[:, 0::2], words[:, 1::2])  # (B, 2) each: pair p fills slots 2p, 2p+1
    flat = np.stack((z0, z1), axis=-1).reshape(-1)  # (4B,) float64 in element order
    return flat[:n], dims  # (N,) float64


def dln1_normal(seed: int, shape: tuple[int, ...], stream: int = 0) -> NDArray[np.float32]:
    """Draw DLN-1 standard normal noise.

    Element ``i`` (row-major) uses Philox block ``i // 4`` with counter
    ``(b mod 2**32, b >> 32, stream, 0)`` and key ``(seed mod 2**32, seed >> 32)``; slot ``i % 4`` selects
    z0/z1 of the word pair (x0, x1) or (x2, x3). Element ``i`` is therefore the same in every tensor that
    has at least ``i + 1`` elements.

    Args:
        seed: uint64 seed, 0..2**64 - 1. Image ``k`` of a request with seed ``s`` uses
            ``(s + k) mod 2**64``.
        shape: output shape, e.g. ``(1, 4, 128, 128)``; ``()`` gives one value, a zero dimension none.
        stream: uint32 stream number, 0..2**32 - 1; 0 is the initial latent, 1 + k is reserved for the
            noise of sampler step k.

    Returns:
        float32 array of ``shape``.

    Raises:
        ValueError: if ``seed`` or ``stream`` is out of range or a dimension is negative.
        TypeError: if an argument is not an integer (or a tuple of integers for ``shape``).
    """
    flat, dims = _draw_float64(seed, shape, stream)  # (N,) float64
    return flat.astype(np.float32).reshape(dims)  # round to nearest even


def dln1_normal_float64(seed: int, shape: tuple[int, ...], stream: int = 0) -> NDArray[np.float64]:
    """The DLN-1 values before the final float32 cast (a conformance aid).

    The float64 values are fully determined by the spec, and they expose a port that breaks a build rule
    (for example an ``a * b + c`` contracted into an FMA): such a port differs here in the last bit of
    many values while its float32 output differs only in about one value in 2**28.

    Args:
        seed: as for :func:`dln1_normal`.
        shape: as for :func:`dln1_normal`.
        stream: as for :func:`dln1_normal`.

    Returns:
        float64 array of ``shape``; ``dln1_normal`` is this array cast to float32.

    Raises:
        ValueError: as for :func:`dln1_normal`.
        TypeError: as for :func:`dln1_normal`.
    """
    flat, dims = _draw_float64(seed, shape, stream)  # (N,) float64
    return flat.reshape(dims)


# ------------------------------------------------------------------ golden vectors
class PhiloxKat(NamedTuple):
    """One Random123 known-answer test for Philox4x32-10."""

    name: str
    counter: tuple[int, int, int, int]
    key: tuple[int, int]
    output: tuple[int, int, int, int]


PHILOX_KATS: Final = (
    PhiloxKat("zeros", (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    PhiloxKat(
        "ones",
        (_MASK32, _MASK32, _MASK32, _MASK32),
        (_MASK32, _MASK32),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    PhiloxKat(
        "pi",
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
)
"""Random123 ``kat_vectors`` for philox4x32_10: counter, key and expected output words."""


class GoldenCase(NamedTuple):
    """One DLN-1 golden case: the full output of ``dln1_normal(seed, shape, stream)``."""

    name: str
    seed: int
    stream: int
    shape: tuple[int, ...]


GOLDEN_CASES: Final = (
    GoldenCase("seed0_first16", 0, 0, (16,)),
    GoldenCase("seed1_first16", 1, 0, (16,)),
    GoldenCase("seed42_first16", 42, 0, (16,)),
    GoldenCase("seedmax_first16", _UINT64_MAX, 0, (16,)),
    GoldenCase("seed0123456789abcdef_first16", 0x0123456789ABCDEF, 0, (16,)),
    GoldenCase("seed0_stream1_first16", 0, 1, (16,)),
    GoldenCase("seed42_shape3x5", 42, 0, (3, 5)),
    GoldenCase("seedmax_streammax_shape7", _UINT64_MAX, _UINT32_MAX, (7,)),
    GoldenCase("seed0_1x4x64x64", 0, 0, (1, 4, 64, 64)),
    GoldenCase("seed42_1x4x64x64", 42, 0, (1, 4, 64, 64)),
    GoldenCase("seed0_1x4x128x128", 0, 0, (1, 4, 128, 128)),
    GoldenCase("seed42_1x4x128x128", 42, 0, (1, 4, 128, 128)),
)
"""The cases every port must reproduce (names are the keys the verifier matches on)."""


def _hex_words(words: Sequence[int]) -> list[str]:
    return [f"{int(w):08x}" for w in words]


def _float32_hex(values: NDArray[np.float32]) -> list[str]:
    return _hex_words(values.reshape(-1).view(np.uint32).tolist())


def _float64_hex(values: NDArray[np.float64]) -> list[str]:
    return [f"{int(w):016x}" for w in values.reshape(-1).view(np.uint64).tolist()]


def _sha256_le(values: NDArray[np.float32] | NDArray[np.float64]) -> str:
    """SHA-256 of the values as little-endian bytes of their own width."""
    little = values.reshape(-1).astype(values.dtype.newbyteorder("<"))  # (N,) little-endian
    return hashlib.sha256(little.tobytes()).hexdigest()


def golden_vectors() -> dict[str, Any]:
    """Compute the golden vectors from this implementation.

    Returns:
        A JSON-ready dict in the golden/candidate format described in the module docstring.
    """
    kats: list[dict[str, Any]] = []
    for kat in PHILOX_KATS:
        got = philox4x32_10(np.array(kat.counter, dtype=np.uint32), kat.key)  # (4,) uint32
        kats.append(
            {
                "name": kat.name,
                "counter": _hex_words(kat.counter),
                "key": _hex_words(kat.key),
                "output": _hex_words(got.tolist()),
            }
        )
    cases: list[dict[str, Any]] = []
    for case in GOLDEN_CASES:
        wide = dln1_normal_float64(case.seed, case.shape, case.stream)  # case.shape float64
        values = wide.astype(np.float32)  # case.shape float32, = dln1_normal(...)
        entry: dict[str, Any] = {
            "name": case.name,
            "seed": str(case.seed),
            "stream": case.stream,
            "shape": list(case.shape),
        }
        if values.size <= LISTED_VALUES_MAX:
            entry["float32_hex"] = _float32_hex(values)
            entry["float64_hex"] = _float64_hex(wide)
        entry["sha256"] = _sha256_le(values)
        entry["sha256_float64"] = _sha256_le(wide)
        cases.append(entry)
    return {
        "spec_version": SPEC_VERSION,
        "generated_by": GENERATED_BY,
        "philox4x32_10_kat": kats,
        "normal": cases,
    }


def _json_text(value: Any, depth: int) -> str:
    """Indented JSON where lists of scalars stay on one line (keeps the golden file readable)."""
    pad = "  " * depth
    if isinstance(value, Mapping):
        items = [f"{pad}  {json.dumps(k)}: {_json_text(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
        items = [f"{pad}  {_json_text(v, depth + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def golden_json_text(vectors: Mapping[str, Any] | None = None) -> str:
    """Serialise golden vectors exactly as the shipped file stores them.

    Args:
        vectors: the dict to write; computed with :func:`golden_vectors` when omitted.

    Returns:
        The file content, ending in a newline.
    """
    return _json_text(golden_vectors() if vectors is None else vectors, 0) + "\n"


def load_golden_file(path: Path | None = None) -> dict[str, Any]:
    """Read the shipped golden vectors.

    Args:
        path: file to read; :data:`GOLDEN_PATH` when omitted.

    Returns:
        The parsed JSON object.

    Raises:
        ValueError: if the file is not a JSON object.
    """
    data = json.loads((path or GOLDEN_PATH).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path or GOLDEN_PATH}: expected a JSON object at top level")
    return data


# ------------------------------------------------------------------ verification
_MAX_ELEMENT_REPORTS: Final = 5


def _by_name(entries: object, section: str, who: str, problems: list[str]) -> dict[str, Mapping[str, Any]]:
    """Index a list of case objects by their ``name``; malformed entries become problems."""
    if not isinstance(entries, list):
        problems.append(f"{who}: `{section}` must be a list of objects; got {type(entries).__name__}")
        return {}
    indexed: dict[str, Mapping[str, Any]] = {}
    for position, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if not isinstance(entry, Mapping) or not isinstance(name, str):
            problems.append(f"{who}: `{section}`[{position}] is not an object with a string `name`")
        elif name in indexed:
            problems.append(f"{who}: `{section}` has the name {name!r} twice")
        else:
            indexed[name] = entry
    return indexed


def _normalised(value: object) -> object:
    """Lower-case hex strings (alone or in lists) so that the comparison ignores hex letter case."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _compare_words(label: str, expected: object, got: object, problems: list[str]) -> None:
    """Compare two hex-word lists element by element, reporting the first few differences."""
    exp, act = _normalised(expected), _normalised(got)
    if not isinstance(act, list):
        problems.append(f"{label}: expected a list of hex strings; got {got!r}")
        return
    if not isinstance(exp, list):
        problems.append(f"{label}: the reference has no list here")
        return
    if len(act) != len(exp):
        problems.append(f"{label}: expected {len(exp)} values; got {len(act)}")
        return
    diffs = [i for i, (x, y) in enumerate(zip(exp, act, strict=True)) if x != y]
    for i in diffs[:_MAX_ELEMENT_REPORTS]:
        problems.append(f"{label}[{i}]: expected {exp[i]}; got {act[i]}")
    if len(diffs) > _MAX_ELEMENT_REPORTS:
        problems.append(f"{label}: {len(diffs) - _MAX_ELEMENT_REPORTS} more differing values")


def _compare_section(
    section: str,
    fields_exact: tuple[str, ...],
    fields_words: tuple[str, ...],
    fields_scalar: tuple[str, ...],
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    problems: list[str],
) -> None:
    """Compare one list section (``philox4x32_10_kat`` or ``normal``) case by case."""
    ref_cases = _by_name(reference.get(section), section, "reference", problems)
    cand_cases = _by_name(candidate.get(section, []), section, "candidate", problems)
    for name, ref in ref_cases.items():
        label = f"{section}[{name!r}]"
        cand = cand_cases.get(name)
        if cand is None:
            problems.append(f"{label}: missing from the candidate")
            continue
        for field in fields_exact:
            if _normalised(cand.get(field)) != _normalised(ref.get(field)):
                problems.append(
                    f"{label}.{field}: the candidate computed a different input "
                    f"({cand.get(field)!r}; expected {ref.get(field)!r})"
                )
        for field in fields_words:
            if field in ref:
                _compare_words(f"{label}.{field}", ref[field], cand.get(field), problems)
        for field in fields_scalar:
            if field in ref and _normalised(cand.get(field)) != _normalised(ref[field]):
                problems.append(f"{label}.{field}: expected {ref[field]}; got {cand.get(field)}")
    for name in cand_cases.keys() - ref_cases.keys():
        problems.append(f"{section}[{name!r}]: not a case of {SPEC_VERSION} (unknown name)")


def verify_vectors(candidate: Mapping[str, Any], *, reference: Mapping[str, Any] | None = None) -> list[str]:
    """Check a port's vector file against the golden vectors.

    The candidate uses the golden file's own format (see the module docstring). It must contain every
    Philox KAT and every normal case of the reference under the same names and inputs, with identical
    output words, float32 and float64 bit patterns and SHA-256 digests; hex letter case is ignored,
    ``generated_by`` is free text.

    Args:
        candidate: the parsed JSON printed by a port's vector program.
        reference: the golden vectors; :func:`load_golden_file` when omitted.

    Returns:
        Human-readable mismatches, one per line; an empty list means the port matches bit for bit.
    """
    ref = load_golden_file() if reference is None else reference
    if not isinstance(candidate, Mapping):
        return [f"candidate: expected a JSON object; got {type(candidate).__name__}"]
    problems: list[str] = []
    if candidate.get("spec_version") != ref.get("spec_version"):
        problems.append(
            f"spec_version: expected {ref.get('spec_version')!r}; got {candidate.get('spec_version')!r}"
        )
    _compare_section("philox4x32_10_kat", ("counter", "key"), ("output",), (), ref, candidate, problems)
    _compare_section(
        "normal",
        ("seed", "stream", "shape"),
        ("float32_hex", "float64_hex"),
        ("sha256", "sha256_float64"),
        ref,
        candidate,
        problems,
    )
    if problems and all("float64" in problem for problem in problems):
        problems.append(
            "hint: only the float64 values differ, so the float32 noise matches today but will differ in "
            "rare elements; the port breaks a build rule (an FMA from contraction, Math.fma, -ffast-math, "
            "x87 excess precision) or changes the order of operations"
        )
    return problems
