"""The ``teacher_caption`` stage, tiny: why its target suits the guided sampler; its rows; its stage."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.train import world
from model_runtime.train.caption_teacher import CaptionTeacherConfig, CaptionTeacherStage, merge_weights
from model_runtime.train.diffusion import (
    Conditions,
    Example,
    NanoModels,
    encode_texts,
    guided_velocity,
    unet_velocity,
)
from model_runtime.train.recipe import Recipe, RecipeConfig

Run = tuple[Recipe, Path, dict[str, float]]
FORWARD = CaptionTeacherConfig(batch=8, generate_share=0.5, states="forward", uncond_share=0.5)


def _scene_teacher(recipe: Recipe) -> NanoModels:
    """The quick run's guided teacher after ``scene``, as the stage reads it."""
    return NanoModels.from_folder(recipe.run_dir / "scene" / "teacher")


def test_with_equal_guidance_the_guided_edit_is_its_two_branches_so_the_stage_target_carries_over(
    quick_run: Run,
) -> None:
    recipe, _, _ = quick_run
    m = _scene_teacher(recipe)
    rng = np.random.default_rng(4)
    edits = [world.train_edit(rng) for _ in range(3)]
    asked = [Example("edit", e.instruction, None, world.render(e.source)) for e in edits]
    with torch.no_grad():
        text, mask = encode_texts(m, asked, [False] * 3)  # (3, L, D)
        text_u, mask_u = encode_texts(m, asked, [True] * 3)  # (3, Lu, D) the edit's empty template
        source = torch.randn((3, 4, 16, 16), generator=torch.Generator().manual_seed(1))  # (3, 4, h, w)
        c = Conditions(torch.ones(3, dtype=torch.bool), text, mask, source, text_u, mask_u)
        x = torch.randn((3, 4, 16, 16), generator=torch.Generator().manual_seed(2))  # (3, 4, h, w)
        sigma = torch.tensor([0.9, 0.5, 0.2])
        for g in (1.5, 3.0):
            guided = guided_velocity(m.unet, x, sigma, c, (g, g))  # (3, 4, h, w)
            v_cond = unet_velocity(m.unet, x, source, sigma, text, mask)
            v_empty = unet_velocity(m.unet, x, torch.zeros_like(source), sigma, text_u, mask_u)
            # the image-only branch cancels: matching the request to the caption and the edit's empty
            # template to the generate one makes the guided edit the guided generation of the caption
            torch.testing.assert_close(guided, g * v_cond + (1 - g) * v_empty, rtol=1e-4, atol=1e-4)
        unequal = guided_velocity(m.unet, x, sigma, c, (1.5, 3.0))
        assert not torch.allclose(unequal, 1.5 * v_cond - 0.5 * v_empty, atol=1e-3)  # needs equal scales


def test_forward_rows_start_at_zero_on_generate_rows_and_the_stage_fits_them(quick_run: Run) -> None:
    recipe, _, _ = quick_run
    m = _scene_teacher(recipe)
    stage = CaptionTeacherStage(m, replace(FORWARD, lr=1e-3, warmup=1), 30, 3)
    edits, scenes, rng = stage.batch(0)
    assert (len(edits), len(scenes)) == (4, 8)
    with torch.no_grad():
        first = stage.row_errors(edits, scenes, rng)  # (8,) 2 ∅ edits, 2 edits, 2 ∅ generate, 2 generate
    # generate rows (conditional and ∅) are the frozen copy's own inputs: zero error before training
    assert float(first[4:].max()) < 1e-9
    # an edit's request, and its empty template (which still shows the VLM the source), are not the caption's
    assert float(first[:4].min()) > 1e-6
    again = stage.row_errors(*stage.batch(0))  # data, times and noise: a pure function of the step
    torch.testing.assert_close(again, first)
    for _ in range(30):  # one batch, again and again: the loss must be fitted
        stage.step(0)
    with torch.no_grad():
        fitted = stage.row_errors(*stage.batch(0))
    assert float(fitted[:4].mean()) < 0.5 * float(first[:4].mean())


def test_forward_and_student_rows_sit_at_different_states(quick_run: Run) -> None:
    recipe, _, _ = quick_run
    m = _scene_teacher(recipe)
    on_policy = CaptionTeacherStage(m, replace(FORWARD, states="student", uncond_share=0.0), 1, 3)
    forward = CaptionTeacherStage(m, replace(FORWARD, uncond_share=0.0), 1, 3)
    with torch.no_grad():
        a = on_policy.row_errors(*on_policy.batch(0))
        b = forward.row_errors(*forward.batch(0))
    assert not torch.allclose(a[:4], b[:4])


def test_the_recipe_stage_rewrites_only_the_teacher_s_unet(quick_run: Run) -> None:
    recipe, _, _ = quick_run
    run = recipe.run_dir
    done = json.loads((run / "teacher_caption" / "done.json").read_text())
    assert done["source"] == str(run / "scene" / "teacher")
    assert set(done["heldout_error"]) == {"before", "after"}
    before, after = run / "scene" / "teacher", run / "teacher_caption" / "teacher"
    files = sorted(p.relative_to(before) for p in before.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(after) for p in after.rglob("*") if p.is_file())
    differ = [f for f in files if (before / f).read_bytes() != (after / f).read_bytes()]
    assert differ == [Path("unet/diffusion_pytorch_model.safetensors")]
    from model_runtime import open_model_folder

    folder = open_model_folder(after)  # still the guided 28-step base folder
    assert (folder.config.variant, folder.config.default_steps) == ("base", 28)


def test_keep_writes_the_interpolation_of_the_start_and_the_trained_unet(
    quick_run: Run, branch_run: Callable[..., Path]
) -> None:
    from safetensors.torch import load_file

    recipe, _, _ = quick_run
    run = branch_run("teacher_caption")
    cfg = recipe.cfg.with_setting("teacher_caption.keep", 0.25)
    Recipe(run, cfg, progress=False).run(("teacher_caption",))
    weights = Path("unet/diffusion_pytorch_model.safetensors")
    start = load_file(str(recipe.run_dir / "scene" / "teacher" / weights))
    # the quick run's own stage: the same steps with keep 1
    trained = load_file(str(recipe.run_dir / "teacher_caption" / "teacher" / weights))
    merged = load_file(str(run / "teacher_caption" / "teacher" / weights))
    assert merged.keys() == start.keys()
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert moved  # the stage trained
    for key in start:
        assert torch.equal(merged[key], torch.lerp(start[key], trained[key], 0.25)), key
    done = json.loads((run / "teacher_caption" / "done.json").read_text())
    first = json.loads((recipe.run_dir / "teacher_caption" / "done.json").read_text())
    assert done["keep"] == 0.25
    assert done["heldout_error_trained"] == first["heldout_error"]["after"]
    assert done["heldout_error"]["before"] == first["heldout_error"]["before"]
    assert done["heldout_error"]["after"] != first["heldout_error"]["after"]


def test_merge_weights_spans_start_to_trained_and_refuses_other_tensors() -> None:
    a = {"w": torch.zeros(3), "n": torch.tensor([1])}
    b = {"w": torch.tensor([1.0, 2.0, -4.0]), "n": torch.tensor([5])}
    assert torch.equal(merge_weights(a, b, 0.0)["w"], a["w"])
    assert torch.equal(merge_weights(a, b, 1.0)["w"], b["w"])
    assert torch.equal(merge_weights(a, b, 0.5)["w"], torch.tensor([0.5, 1.0, -2.0]))
    assert torch.equal(merge_weights(a, b, 0.5)["n"], b["n"])  # integer tensors are not interpolated
    with pytest.raises(ValueError, match=r"differ in \['x'\]"):
        merge_weights(a, {**b, "x": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match=r"w has shape \[3\] and \[2\]"):
        merge_weights(a, {**b, "w": torch.zeros(2)}, 0.5)


def test_refusals_and_a_legacy_recipe(quick_run: Run, branch_run: Callable[..., Path]) -> None:
    recipe, _, _ = quick_run
    run = branch_run("teacher_caption")
    unequal = replace(recipe.cfg, distill=replace(recipe.cfg.distill, guidance=(1.5, 2.0)))
    with pytest.raises(ValueError, match=r"distill.guidance: .*equal text and image guidance, got 1.5, 2.0"):
        Recipe(run, unequal, progress=False).run(("teacher_caption",))
    shutil.rmtree(run / "scene" / "teacher")
    with pytest.raises(FileNotFoundError, match=r"teacher folder .*scene/teacher"):
        Recipe(run, recipe.cfg, progress=False).run(("teacher_caption",))
    Recipe(run, replace(recipe.cfg, teacher_caption_steps=0), progress=False).run(("teacher_caption",))
    assert json.loads((run / "teacher_caption" / "done.json").read_text()) == {"skipped": True}
    legacy = RecipeConfig().to_json()
    del legacy["teacher_caption"], legacy["teacher_caption_steps"]
    assert RecipeConfig.from_json(legacy) == replace(RecipeConfig(), teacher_caption_steps=0)
    with pytest.raises(ValueError, match="states: expected one of student, forward, got 'walk'"):
        CaptionTeacherConfig(states="walk")
    with pytest.raises(ValueError, match=r"uncond_share: expected a value in \[0, 1\], got 1.5"):
        CaptionTeacherConfig(uncond_share=1.5)
    assert RecipeConfig().with_setting("teacher_caption.lr", 1e-4).teacher_caption.lr == 1e-4
    with pytest.raises(ValueError, match=r"keep: expected a value in \[0, 1\], got 1.5"):
        CaptionTeacherConfig(keep=1.5)
    without_keep = RecipeConfig().to_json()
    del without_keep["teacher_caption"]["keep"]  # a recipe.json written before the setting: keeps it all
    assert RecipeConfig.from_json(without_keep).teacher_caption.keep == 1.0
