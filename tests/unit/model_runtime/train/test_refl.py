"""The ``refl`` stage (reward fine-tuning of the 4-step student), tiny: on-policy states, loss, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.train import diffusion
from model_runtime.train.distill import student_states
from model_runtime.train.recipe import Recipe, RecipeConfig
from model_runtime.train.refl import ReflConfig, ReflStage

CFG = ReflConfig(batch=4, lr=2e-3, warmup=1, pool=6)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    torch.set_num_threads(2)
    recipe = Recipe(tmp_path_factory.mktemp("run"), RecipeConfig.quick(), progress=False)
    recipe.run(("tokenizer", "vae"), out=None)
    return recipe


def _stage(recipe: Recipe, cfg: ReflConfig = CFG, total: int = 20) -> ReflStage:
    return ReflStage(recipe.models(), cfg, total=total, seed=7)


def test_the_walk_is_the_student_s_own_euler_steps(run: Recipe) -> None:
    stage = _stage(run)
    m = stage.m
    examples = diffusion.draw_examples(np.random.default_rng(1), 4, 0.5, pool=6, pool_seed=7)
    c = diffusion.conditions(m, examples, guided=False)
    noise = torch.randn(
        (4, 4, diffusion.LATENT, diffusion.LATENT), generator=torch.Generator().manual_seed(0)
    )
    j = torch.tensor([0, 1, 2, 3])
    walked = student_states(m.unet, stage.sig, noise, c, j)  # (4, 4, h, w)
    sig = diffusion.schedule_sigmas(m, 4)
    for row in range(4):
        x = noise[row : row + 1].clone()
        sub = diffusion.Conditions(
            c.is_edit[row : row + 1], c.text[row : row + 1], c.mask[row : row + 1], c.cond[row : row + 1]
        )
        with torch.no_grad():
            for k in range(int(j[row])):
                x = x + (sig[k + 1] - sig[k]) * diffusion.guided_velocity(
                    m.unet, x, sig[k].expand(1), sub, None
                )
        torch.testing.assert_close(walked[row : row + 1], x, atol=1e-5, rtol=1e-4)
    assert torch.equal(walked[0], noise[0])  # j = 0 starts from the noise itself


def test_steps_lower_the_loss_and_leave_a_frozen_text_encoder_alone(run: Recipe) -> None:
    stage = _stage(run)
    text_before = [p.detach().clone() for p in stage.m.text_encoder.parameters()]
    unet_before = [p.detach().clone() for p in stage.m.unet.parameters()]
    first = stage.step(0)["loss"]
    for _ in range(15):
        last = stage.step(0)["loss"]  # the same batch: the student must fit it
    assert last < 0.7 * first
    assert all(torch.equal(a, b) for a, b in zip(text_before, stage.m.text_encoder.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(unet_before, stage.m.unet.parameters(), strict=True))


def test_text_lr_trains_the_encoder_too(run: Recipe) -> None:
    stage = _stage(run, ReflConfig(batch=4, lr=2e-3, text_lr=1e-3, warmup=1, pool=6))
    before = [p.detach().clone() for p in stage.m.text_encoder.parameters()]
    out = stage.step(0)
    assert np.isfinite(out["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.m.text_encoder.parameters(), strict=True))


def test_resume_continues_exactly(run: Recipe, tmp_path: Path) -> None:
    a = _stage(run)
    for i in range(2):
        a.step(i)
    torch.save(a.state_dict(), tmp_path / "ckpt.pt")
    want = a.step(2)["loss"]
    b = _stage(run)
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    assert b.step(2)["loss"] == pytest.approx(want, rel=1e-6)
