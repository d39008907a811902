"""The ``caption_teacher`` stage, tiny: its targets, its loss, its resume and its place in the recipe."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.train import world
from model_runtime.train.caption_teacher import CaptionTeacherConfig, CaptionTeacherStage
from model_runtime.train.diffusion import NanoModels
from model_runtime.train.loop import run_stage
from model_runtime.train.recipe import Recipe, RecipeConfig

Run = tuple[Recipe, Path, dict[str, float]]


def _scene_student(recipe: Recipe) -> NanoModels:
    """The quick run's student after ``scene``, as the stage reads it."""
    return NanoModels.from_folder(recipe.run_dir / "scene" / "student")


def _edits(seed: int, n: int) -> list[world.Edit]:
    rng = np.random.default_rng(seed)
    return [world.train_edit(rng) for _ in range(n)]


def test_generate_rows_start_at_zero_error_and_edit_rows_do_not(quick_run: Run) -> None:
    recipe, _, _ = quick_run
    stage = CaptionTeacherStage(
        _scene_student(recipe), CaptionTeacherConfig(batch=8, generate_share=0.5), 1, 3
    )
    edits, scenes, rng = stage.batch(0)
    assert len(edits) == 4
    assert len(scenes) == 8
    assert [s.key() for s in scenes[:4]] == [e.target.key() for e in edits]
    with torch.no_grad():
        per_row = stage.row_errors(edits, scenes, rng)  # (8,)
    # the teacher is the student on the generate path: the same caption, a zero condition latent (equal up
    # to the padding of the batch: the requests pad to the longest edit request, the captions do not)
    assert float(per_row[4:].max()) < 1e-9
    # an edit row sees the request and the source, not the caption: its velocity differs
    assert float(per_row[:4].min()) > 1e-6


def test_the_stage_fits_its_teacher_and_trains_only_the_unet(quick_run: Run) -> None:
    recipe, _, _ = quick_run
    m = _scene_student(recipe)
    encoder_before = {k: v.clone() for k, v in m.text_encoder.state_dict().items()}
    stage = CaptionTeacherStage(m, CaptionTeacherConfig(batch=8, lr=1e-3, warmup=1), 30, 7)
    held = _edits(99, 16)
    before = stage.heldout_error(held)
    assert stage.heldout_error(held) == before  # fixed noise and steps walked: the measure repeats
    with torch.no_grad():
        first = stage.row_errors(*stage.batch(0))  # (8,) step 0's rows, noise and steps walked
    losses = [stage.step(0) for _ in range(30)]  # one batch, again and again: the loss must be fitted
    with torch.no_grad():
        fitted = stage.row_errors(*stage.batch(0))  # (8,)
    assert all(np.isfinite(v) for row in losses for v in row.values())
    assert set(losses[0]) == {"loss", "edit", "generate"}
    assert losses[0]["loss"] == pytest.approx(float(first.mean()), rel=1e-5)
    assert float(fitted.mean()) < 0.5 * float(first.mean())
    assert stage.heldout_error(held) != before  # the UNet moved
    for key, value in m.text_encoder.state_dict().items():  # the encoder is only read
        assert torch.equal(value, encoder_before[key]), key
    teacher = _scene_student(recipe).unet.state_dict()
    for key, value in stage.teacher.state_dict().items():  # the teacher stays the starting UNet
        assert torch.equal(value, teacher[key]), key


def test_a_resumed_stage_continues_exactly(quick_run: Run, tmp_path: Path) -> None:
    recipe, _, _ = quick_run
    cfg = CaptionTeacherConfig(batch=4, warmup=1)

    def stage() -> CaptionTeacherStage:
        return CaptionTeacherStage(_scene_student(recipe), cfg, 4, seed=5)

    straight = stage()
    run_stage(straight, "caption_teacher", 4, tmp_path / "a", progress=False)
    first = stage()
    run_stage(first, "caption_teacher", 2, tmp_path / "b", progress=False)  # interrupted after 2 of 4
    resumed = stage()  # rebuilt from the folder: its teacher is the starting UNet again
    run_stage(resumed, "caption_teacher", 4, tmp_path / "b", progress=False)
    for (key, a), b in zip(
        straight.m.unet.state_dict().items(), resumed.m.unet.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=key)


def test_the_recipe_changes_only_the_unet_file_and_ships_that_student(quick_run: Run) -> None:
    recipe, out, _ = quick_run
    run = recipe.run_dir
    done = json.loads((run / "caption_teacher" / "done.json").read_text())
    assert set(done["heldout_error"]) == {"before", "after"}
    assert done["source"] == str(run / "scene" / "student")
    before, after = run / "scene" / "student", run / "caption_teacher" / "student"
    files = sorted(p.relative_to(before) for p in before.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(after) for p in after.rglob("*") if p.is_file())
    differ = [f for f in files if (before / f).read_bytes() != (after / f).read_bytes()]
    assert differ == [Path("unet/diffusion_pytorch_model.safetensors")]
    old, new = NanoModels.from_folder(before), NanoModels.from_folder(after)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(old.unet.state_dict().values(), new.unet.state_dict().values(), strict=True)
    )
    from safetensors import safe_open

    # the folder's storage precision is kept

    with safe_open(str(after / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        kinds = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (a safetensors handle is not a dict)
    with safe_open(str(before / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert kinds == {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (a safetensors handle is not a dict)
    assert recipe.last_student_stage() == "caption_teacher"
    for f in files:  # the output folder is this stage's student
        assert (out / f).read_bytes() == (after / f).read_bytes(), f


def test_without_scene_steps_the_stage_starts_from_the_distilled_student(
    quick_run: Run, branch_run: Callable[..., Path], tmp_path: Path
) -> None:
    recipe, _, _ = quick_run
    run = branch_run("scene", "caption_teacher")
    cfg = replace(recipe.cfg, scene_steps=0)
    out = tmp_path / "model"
    r = Recipe(run, cfg, progress=False)
    assert r.last_student_stage() == "caption_teacher"
    r.run(("scene", "caption_teacher"), out=out)
    assert json.loads((run / "scene" / "done.json").read_text()) == {"skipped": True}
    assert json.loads((run / "caption_teacher" / "done.json").read_text())["source"] == str(run / "student")
    encoder = Path("text_encoder") / "model.safetensors"
    assert (out / encoder).read_bytes() == (run / "student" / encoder).read_bytes()
    unet = Path("unet") / "diffusion_pytorch_model.safetensors"
    assert (out / unet).read_bytes() != (run / "student" / unet).read_bytes()


def test_a_recipe_without_caption_teacher_steps_ships_the_scene_student(
    quick_run: Run, branch_run: Callable[..., Path], tmp_path: Path
) -> None:
    recipe, _, _ = quick_run
    run = branch_run("caption_teacher")
    (run / "scene" / "done.json").unlink()  # scene again (its checkpoint is complete: no steps)
    cfg = replace(recipe.cfg, caption_teacher_steps=0)
    out = tmp_path / "model"
    Recipe(run, cfg, progress=False).run(("scene", "caption_teacher"), out=out)
    assert json.loads((run / "caption_teacher" / "done.json").read_text()) == {"skipped": True}
    assert not (run / "caption_teacher" / "student").exists()
    for p in (run / "scene" / "student").rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(run / "scene" / "student")).read_bytes() == p.read_bytes()


def test_a_recipe_written_before_the_stage_has_none_and_bad_settings_are_named() -> None:
    legacy = RecipeConfig().to_json()
    del legacy["caption_teacher"], legacy["caption_teacher_steps"]
    assert RecipeConfig.from_json(legacy) == replace(RecipeConfig(), caption_teacher_steps=0)
    saved = RecipeConfig.from_json(json.loads(json.dumps(RecipeConfig().to_json())))
    assert saved == RecipeConfig()
    with pytest.raises(ValueError, match=r"generate_share: expected a value in \[0, 1\), got 1.0"):
        CaptionTeacherConfig(generate_share=1.0)
    with pytest.raises(ValueError, match="batch: expected at least 1 row, got 0"):
        CaptionTeacherConfig(batch=0)
    assert RecipeConfig().with_setting("caption_teacher.lr", 1e-4).caption_teacher.lr == 1e-4
