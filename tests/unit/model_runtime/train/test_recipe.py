"""The training recipe on tiny sizes: every stage runs, losses are finite and fall, the folder serves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.train import diffusion, vae_fit
from model_runtime.train.configs import NanoSizes
from model_runtime.train.recipe import STAGES, Recipe, RecipeConfig


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recipe, Path, dict[str, float]]:
    torch.set_num_threads(2)
    run_dir = tmp_path_factory.mktemp("run")
    out = run_dir / "model"
    recipe = Recipe(run_dir, RecipeConfig.quick(), progress=False)
    timings = recipe.run(STAGES, out=out)
    return recipe, out, timings


def test_every_stage_ran_with_finite_losses(quick_run: tuple[Recipe, Path, dict[str, float]]) -> None:
    recipe, _, timings = quick_run
    assert set(timings) == set(STAGES)
    log = json.loads((recipe.run_dir / "train_log.json").read_text())
    for stage in STAGES[1:]:
        losses = log[stage]["losses"]["loss"]
        assert losses, stage
        assert all(math.isfinite(v) for v in losses), stage
        assert (recipe.run_dir / stage / "ckpt.pt").is_file()


def test_rerun_resumes_without_work(quick_run: tuple[Recipe, Path, dict[str, float]]) -> None:
    recipe, out, _ = quick_run
    again = Recipe(recipe.run_dir, progress=False)
    assert again.run(STAGES, out=out) == {}


def test_written_folder_loads_and_serves(quick_run: tuple[Recipe, Path, dict[str, float]]) -> None:
    from model_runtime import SampleSpec, load_pipeline, open_model_folder
    from model_runtime.train import world

    _, out, _ = quick_run
    folder = open_model_folder(out)
    assert folder.config.model_id == "dreamlite-nano"
    assert folder.config.default_size == (128, 128)
    assert (folder.config.drop_idx_generate, folder.config.drop_idx_edit) == (34, 64)
    pipe = load_pipeline(out)
    source = world.render(world.random_scene(np.random.default_rng(0)))
    results = pipe.run(
        [
            SampleSpec(
                task="generate", prompt="a small red circle on the left on a white background", seed=1
            ),
            SampleSpec(task="edit", prompt="remove the red circle", seed=2, image=source),
        ]
    )
    assert [r.image.shape for r in results] == [(128, 128, 3), (128, 128, 3)]  # type: ignore[union-attr]
    teacher = open_model_folder(out.parent / "teacher")
    assert teacher.config.variant == "base"
    assert teacher.config.default_steps == 28


def test_vae_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    vae = vae_fit.build_vae(NanoSizes.test())
    x, w = vae_fit.image_batch(np.random.default_rng(0), 4, crop=32)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = vae_fit.vae_loss(vae, x, w, latent_noise=0.0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


def test_diffusion_loss_falls_on_a_fixed_batch(quick_run: tuple[Recipe, Path, dict[str, float]]) -> None:
    recipe, _, _ = quick_run
    models = recipe.models()
    stage = diffusion.DiffusionStage(
        models, diffusion.DiffusionConfig(edit_share=0.5, batch=4, warmup=1), 40, seed=3
    )
    examples, _ = stage.batch(0)
    losses = []
    for _ in range(20):
        loss = stage.loss(examples, np.random.default_rng(0))  # same batch, same noise and t
        stage.opt.zero_grad()
        loss.backward()
        stage.opt.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_vae_precision_auto_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(vae_fit, "native_bf16", lambda native=native: native)
        assert vae_fit.resolve_precision("auto") == expected
        assert vae_fit.VaeStage(vae_fit.build_vae(NanoSizes.test()), 1).precision == expected
    assert vae_fit.resolve_precision("fp32") == "fp32"
    assert vae_fit.resolve_precision("bf16") == "bf16"


def test_vae_stage_records_its_precision(quick_run: tuple[Recipe, Path, dict[str, float]]) -> None:
    recipe, _, _ = quick_run
    info = json.loads((recipe.run_dir / "vae" / "done.json").read_text())
    assert info["precision"] == vae_fit.resolve_precision(recipe.cfg.vae_precision)
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_vae_step_runs_in_either_precision(precision: vae_fit.VaePrecision) -> None:
    torch.manual_seed(0)
    stage = vae_fit.VaeStage(vae_fit.build_vae(NanoSizes.test()), 2, batch=2, crop=32, precision=precision)
    parts = stage.step(0)
    assert math.isfinite(parts["loss"])
