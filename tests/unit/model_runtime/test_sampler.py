"""Stage ⑤ sampler: schedule tables and the Euler update, bit-for-bit against diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from model_runtime.dtypes import DTYPES, round_to
from model_runtime.sampler import compute_schedule, euler_step, shift_mu
from tests.conftest import CASES, TINY_MODEL

SCHEDULER_CONFIG = json.loads((TINY_MODEL / "scheduler" / "scheduler_config.json").read_text())


@pytest.mark.parametrize("case", ["gen_256", "gen_320x192", "edit_1024"])
def test_schedule_matches_fixture(case: str) -> None:
    req = json.loads((CASES / case / "request.json").read_text())["derived"]
    sched = compute_schedule(SCHEDULER_CONFIG, req["effective_width"], req["effective_height"], 4)
    np.testing.assert_array_equal(sched.sigmas, np.load(CASES / case / "sigmas.npy"))
    np.testing.assert_array_equal(sched.timesteps, np.load(CASES / case / "timesteps.npy"))
    assert sched.mu == pytest.approx(req["mu"], abs=1e-12)


def test_mu_for_documented_sizes() -> None:
    # dreamlite-reference.md §6: max_shift 1.15 → 1024² gives mu = 1.15; 1152×896 → 1.1392; 512² → 0.630.
    assert shift_mu(SCHEDULER_CONFIG, 1024, 1024) == pytest.approx(1.15)
    assert shift_mu(SCHEDULER_CONFIG, 1152, 896) == pytest.approx(1.1392, abs=1e-4)
    assert shift_mu(SCHEDULER_CONFIG, 512, 512) == pytest.approx(0.630, abs=1e-3)
    # The pipeline's fallback when max_shift is missing is 1.16 (not diffusers' 1.15).
    no_max = {k: v for k, v in SCHEDULER_CONFIG.items() if k != "max_shift"}
    assert shift_mu(no_max, 1024, 1024) == pytest.approx(1.16)


def test_28_step_table_matches_reference() -> None:
    sched = compute_schedule(SCHEDULER_CONFIG, 1024, 1024, 28)
    # First entries of the 28-step table in dreamlite-reference.md §6 (max_shift 1.15).
    assert sched.sigmas[:4] == pytest.approx([1.0, 0.988409, 0.976222, 0.963394], abs=1e-6)
    assert sched.sigmas[-2:] == pytest.approx([0.104721, 0.0], abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_euler_step_is_bit_identical_to_scheduler_step(dtype: str) -> None:
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4), mu=0.8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g).to(torch_dtype)
    mine = x.float().numpy()
    for i in range(4):
        v = (torch.randn(2, 4, 16, 16, generator=g) * 0.7).to(torch_dtype)
        x = scheduler.step(v, scheduler.timesteps[i], x, return_dict=False)[0]
        s = scheduler.sigmas.numpy()
        mine = euler_step(mine, v.float().numpy(), float(s[i]), float(s[i + 1]), dtype)  # type: ignore[arg-type]
        np.testing.assert_array_equal(mine, x.float().numpy())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_unet_timesteps_rounded_like_the_official_cast(dtype: str) -> None:
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    sched = compute_schedule(SCHEDULER_CONFIG, 1024, 1024, 4)
    expected = torch.from_numpy(sched.timesteps.copy()).to(torch_dtype).float().numpy()
    np.testing.assert_array_equal(sched.unet_timesteps(dtype), expected)  # type: ignore[arg-type]
    if dtype == "bfloat16":  # the reference's table: 1000, 904, 760, 512 at 1024², max_shift 1.15
        assert sched.unet_timesteps("bfloat16").tolist() == [1000.0, 904.0, 760.0, 512.0]


def test_round_to_matches_torch_casts() -> None:
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 1000
    x[:4] = [np.inf, -np.inf, 0.0, -0.0]
    for dtype, torch_dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        expected = torch.from_numpy(x).to(torch_dtype).float().numpy()
        np.testing.assert_array_equal(round_to(x, dtype), expected)  # type: ignore[arg-type]
    assert np.isnan(round_to(np.asarray([np.nan], np.float32), "bfloat16")[0])
