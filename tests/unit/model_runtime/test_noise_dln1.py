"""DLN-1 numpy reference: Philox KATs, golden vectors, an independent scalar reference, statistics."""

from __future__ import annotations

import copy
import math
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_runtime.noise_dln1 import (
    GOLDEN_CASES,
    GOLDEN_PATH,
    PHILOX_KATS,
    dln1_normal,
    dln1_normal_float64,
    golden_json_text,
    golden_vectors,
    load_golden_file,
    philox4x32_10,
    verify_vectors,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------- scalar reference, straight from the spec
M32 = 0xFFFFFFFF


def ref_philox(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, x1, x2, x3 = counter
    k0, k1 = key
    for rnd in range(10):
        if rnd > 0:
            k0 = (k0 + 0x9E3779B9) & M32
            k1 = (k1 + 0xBB67AE85) & M32
        p0 = 0xD2511F53 * x0
        p1 = 0xCD9E8D57 * x2
        x0, x1, x2, x3 = (p1 >> 32) ^ x1 ^ k0, p1 & M32, (p0 >> 32) ^ x3 ^ k1, p0 & M32
    return x0, x1, x2, x3


def ref_ln(u: float) -> float:
    m, e = math.frexp(u)
    if m < float.fromhex("0x1.6a09e667f3bcdp-1"):
        m = m * 2.0
        e = e - 1
    s = (m - 1.0) / (m + 1.0)
    t = s * s
    c = [1.0 / (2 * k + 1) for k in range(11)]
    p = c[10]
    for k in range(9, -1, -1):
        p = p * t + c[k]  # Python floats: two separate roundings, never an FMA
    ln_m = 2.0 * (s * p)
    return float(e) * float.fromhex("0x1.62e42fefa39efp-1") + ln_m


def ref_sin_cos(x: float) -> tuple[float, float]:
    inv = [1.0]
    for n in range(1, 24):
        inv.append(inv[n - 1] / n)
    t = x * x
    s = -inv[23]
    for j in range(10, -1, -1):
        s = s * t + (-inv[2 * j + 1] if j % 2 else inv[2 * j + 1])
    c = -inv[22]
    for j in range(10, -1, -1):
        c = c * t + (-inv[2 * j] if j % 2 else inv[2 * j])
    return x * s, c


def ref_pair(a: int, b: int) -> tuple[float, float]:
    u = (a + 0.5) * 2.0**-32
    r = math.sqrt(-2.0 * ref_ln(u))
    q = b >> 30
    f = ((b & 0x3FFFFFFF) + 0.5) * 2.0**-30
    sin_t, cos_t = ref_sin_cos(f * float.fromhex("0x1.921fb54442d18p+0"))
    c, s = [(cos_t, sin_t), (-sin_t, cos_t), (-cos_t, -sin_t), (sin_t, -cos_t)][q]
    return r * c, r * s


def ref_float64(seed: int, n: int, stream: int) -> list[float]:
    out: list[float] = []
    for i in range(n):
        block, slot = divmod(i, 4)
        x = ref_philox((block & M32, block >> 32, stream, 0), (seed & M32, seed >> 32))
        pair = ref_pair(x[0], x[1]) if slot < 2 else ref_pair(x[2], x[3])
        out.append(pair[slot % 2])
    return out


def to_f32_bits(value: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", value))[0])  # struct rounds to nearest even


def to_f64_bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


# ---------------------------------------------------------------- Philox
@pytest.mark.parametrize("kat", PHILOX_KATS, ids=lambda k: k.name)
def test_philox_known_answers(kat: Any) -> None:
    got = philox4x32_10(np.array(kat.counter, dtype=np.uint32), kat.key)
    assert got.dtype == np.uint32
    assert tuple(got.tolist()) == kat.output
    assert ref_philox(kat.counter, kat.key) == kat.output


def test_philox_vectorised_with_per_block_keys() -> None:
    counters = np.array([k.counter for k in PHILOX_KATS], dtype=np.uint32)  # (3, 4)
    keys = np.array([k.key for k in PHILOX_KATS], dtype=np.uint32)  # (3, 2)
    got = philox4x32_10(counters, keys)
    assert got.shape == (3, 4)
    assert [tuple(row) for row in got.tolist()] == [k.output for k in PHILOX_KATS]


def test_philox_rejects_bad_shapes_and_words() -> None:
    with pytest.raises(ValueError, match="counter"):
        philox4x32_10(np.zeros((2, 3), dtype=np.uint32), (0, 0))
    with pytest.raises(ValueError, match="key"):
        philox4x32_10(np.zeros((2, 4), dtype=np.uint32), (0, 2**32))
    with pytest.raises(ValueError, match="counter"):
        philox4x32_10(np.array([0, 0, 0, -1]), (0, 0))


# ---------------------------------------------------------------- golden vectors
def test_prototype_values_from_parity_note() -> None:
    """parity.md §5.4 item 6 lists these prototype values; the frozen spec reproduces them."""
    seed0 = ["3f7dbb33", "bf6cb6b0", "bf1e1b9f", "bef6d1b2", "be1d5357", "3e392a6d", "3f54ec98", "3e4a2da3"]
    seed42 = ["bf785e5c", "3e46ace8", "bf9e28d2", "3ff6433b", "bd95e030", "3e0e7a0f", "bf8da733", "3ea742fd"]
    assert [f"{w:08x}" for w in dln1_normal(0, (8,)).view(np.uint32).tolist()] == seed0
    assert [f"{w:08x}" for w in dln1_normal(42, (8,)).view(np.uint32).tolist()] == seed42


def test_golden_file_matches_the_implementation() -> None:
    golden = load_golden_file()
    assert golden["spec_version"] == "DLN-1"
    assert golden["generated_by"]
    assert [k["name"] for k in golden["philox4x32_10_kat"]] == ["zeros", "ones", "pi"]
    assert [c["name"] for c in golden["normal"]] == [c.name for c in GOLDEN_CASES]
    by_name = {c["name"]: c for c in golden["normal"]}
    for name in ("seed0_first16", "seed1_first16", "seed42_first16", "seedmax_first16"):
        case = by_name[name]
        values = dln1_normal(int(case["seed"]), (16,), case["stream"])
        assert [f"{w:08x}" for w in values.view(np.uint32).tolist()] == case["float32_hex"], name
        assert len(case["float32_hex"]) == 16
    assert by_name["seedmax_first16"]["seed"] == str(2**64 - 1)
    assert by_name["seed42_shape3x5"]["shape"] == [3, 5]
    assert by_name["seed0_stream1_first16"]["stream"] == 1
    assert verify_vectors(golden_vectors()) == []


def test_golden_file_is_what_the_generator_writes(tmp_path: Path) -> None:
    assert GOLDEN_PATH.read_text(encoding="utf-8") == golden_json_text()
    target = tmp_path / "golden.json"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_dln1_golden.py"), "--output", str(target)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert target.read_bytes() == GOLDEN_PATH.read_bytes()
    check = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_dln1_golden.py"), "--check"],
        capture_output=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr


# ---------------------------------------------------------------- scalar reference agreement
@pytest.mark.parametrize(
    ("seed", "shape", "stream"),
    [
        (0, (16,), 0),
        (1, (16,), 0),
        (42, (3, 5), 0),  # 15 elements: the last block is cut after slot 2
        (0, (16,), 1),
        (2**64 - 1, (7,), 2**32 - 1),
        (0x0123456789ABCDEF, (2, 3, 3), 5),
        (2**32, (1,), 0),  # key (0, 1): catches swapped key words
        (123456789, (1, 4, 8, 8), 0),
    ],
)
def test_vectorised_matches_scalar_reference(seed: int, shape: tuple[int, ...], stream: int) -> None:
    n = math.prod(shape)
    expected = ref_float64(seed, n, stream)
    wide = dln1_normal_float64(seed, shape, stream)
    narrow = dln1_normal(seed, shape, stream)
    assert wide.shape == shape
    assert wide.dtype == np.float64
    assert narrow.shape == shape
    assert narrow.dtype == np.float32
    assert [to_f64_bits(v) for v in expected] == wide.reshape(-1).view(np.uint64).tolist()
    assert [to_f32_bits(v) for v in expected] == narrow.reshape(-1).view(np.uint32).tolist()


def test_ln_and_sin_cos_are_accurate() -> None:
    for u in (2.0**-33, 1e-5, 0.25, 0.5, 0.70710678, 0.9, 1 - 2.0**-33):
        assert abs(ref_ln(u) - math.log(u)) <= 4e-16 * abs(math.log(u))
    for k in range(1, 200):
        x = k / 200 * math.pi / 2
        s, c = ref_sin_cos(x)
        assert abs(s - math.sin(x)) < 4e-16
        assert abs(c - math.cos(x)) < 4e-16


# ---------------------------------------------------------------- layout
def test_chunking_independence() -> None:
    big = dln1_normal(7, (1, 4, 64, 64)).reshape(-1)
    for n in (1, 2, 3, 4, 5, 13, 4097, 16383):
        assert np.array_equal(dln1_normal(7, (n,)).view(np.uint32), big[:n].view(np.uint32)), n
    assert np.array_equal(dln1_normal(7, (4, 64, 64)).reshape(-1), big)
    assert np.array_equal(dln1_normal(7, (4096, 4)).reshape(-1), big)


def test_streams_and_seeds_differ() -> None:
    a = dln1_normal(5, (64,))
    assert not np.array_equal(a, dln1_normal(5, (64,), stream=1))
    assert not np.array_equal(a, dln1_normal(6, (64,)))
    assert not np.array_equal(a, dln1_normal(5 + 2**32, (64,)))


def test_degenerate_shapes() -> None:
    assert dln1_normal(0, ()).shape == ()
    assert dln1_normal(0, ()) == dln1_normal(0, (1,))[0]
    assert dln1_normal(0, (0, 3)).shape == (0, 3)


def test_statistics() -> None:
    x = dln1_normal(2024, (10**6,)).astype(np.float64)
    assert np.isfinite(x).all()
    assert abs(x.mean()) < 0.005
    assert abs(x.std() - 1.0) < 0.005


def test_speed_of_a_1024px_latent() -> None:
    dln1_normal(0, (1, 4, 128, 128))
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        dln1_normal(0, (1, 4, 128, 128))
        best = min(best, time.perf_counter() - start)
    assert best < 0.1, f"(1, 4, 128, 128) took {best:.3f} s"


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range(seed: int) -> None:
    with pytest.raises(ValueError, match=r"`seed`.*18446744073709551615.*Given: " + str(seed)):
        dln1_normal(seed, (4,))


def test_seed_and_stream_bounds_accepted() -> None:
    assert dln1_normal(2**64 - 1, (4,), stream=2**32 - 1).shape == (4,)
    assert dln1_normal(np.uint64(3), (4,)).shape == (4,)  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [-1, 2**32])
def test_stream_out_of_range(stream: int) -> None:
    with pytest.raises(ValueError, match=r"`stream`.*4294967295.*Given: " + str(stream)):
        dln1_normal(0, (4,), stream=stream)


@pytest.mark.parametrize("seed", [1.0, True, "1", None])
def test_seed_must_be_an_integer(seed: Any) -> None:
    with pytest.raises(TypeError, match="`seed`"):
        dln1_normal(seed, (4,))


def test_shape_must_be_non_negative_ints() -> None:
    with pytest.raises(ValueError, match="`shape`"):
        dln1_normal(0, (2, -1))
    with pytest.raises(TypeError, match="`shape`"):
        dln1_normal(0, (2.0, 3))  # type: ignore[arg-type]


# ---------------------------------------------------------------- verify_vectors
def test_verify_vectors_accepts_the_golden_file_and_upper_case() -> None:
    golden = load_golden_file()
    assert verify_vectors(golden) == []
    upper = copy.deepcopy(golden)
    upper["normal"][0]["float32_hex"] = [h.upper() for h in upper["normal"][0]["float32_hex"]]
    upper["generated_by"] = "some port"
    assert verify_vectors(upper) == []


def test_verify_vectors_reports_a_planted_float32_mismatch() -> None:
    candidate = copy.deepcopy(load_golden_file())
    case = next(c for c in candidate["normal"] if c["name"] == "seed42_shape3x5")
    case["float32_hex"][14] = "3f000000"
    problems = verify_vectors(candidate)
    assert problems == ["normal['seed42_shape3x5'].float32_hex[14]: expected bf3fd093; got 3f000000"]


def test_verify_vectors_reports_structure_problems() -> None:
    golden = load_golden_file()
    candidate = copy.deepcopy(golden)
    candidate["spec_version"] = "DLN-0"
    candidate["normal"] = [c for c in candidate["normal"] if c["name"] != "seed0_1x4x64x64"]
    candidate["normal"].append({"name": "my_extra_case"})
    candidate["philox4x32_10_kat"][1]["output"][0] = "00000000"
    candidate["normal"][0]["seed"] = "1"
    candidate["normal"][1]["sha256"] = "0" * 64
    problems = verify_vectors(candidate)
    text = "\n".join(problems)
    assert "spec_version: expected 'DLN-1'; got 'DLN-0'" in text
    assert "normal['seed0_1x4x64x64']: missing from the candidate" in text
    assert "normal['my_extra_case']: not a case of DLN-1" in text
    assert "philox4x32_10_kat['ones'].output[0]: expected 408f276d; got 00000000" in text
    assert "normal['seed0_first16'].seed" in text
    assert "normal['seed1_first16'].sha256: expected" in text
    assert verify_vectors({"spec_version": "DLN-1"})  # empty candidate: everything missing
    assert verify_vectors([])  # type: ignore[arg-type]


def test_verify_vectors_flags_a_float64_only_difference() -> None:
    candidate = copy.deepcopy(load_golden_file())
    first = candidate["normal"][0]["float64_hex"][0]
    candidate["normal"][0]["float64_hex"][0] = f"{int(first, 16) - 1:016x}"  # one ulp, as an FMA would
    problems = verify_vectors(candidate)
    assert len(problems) == 2
    assert problems[0].startswith("normal['seed0_first16'].float64_hex[0]")
    assert problems[1].startswith("hint:")
