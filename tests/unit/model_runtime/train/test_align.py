"""The ``align`` stage, tiny: its data, its loss through the frozen T2I UNet, its place in the recipe."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.train import diffusion, world
from model_runtime.train.align import AlignConfig, AlignStage, reference_requests, requests
from model_runtime.train.recipe import Recipe, RecipeConfig

EARLY = ("tokenizer", "vae", "text", "t2i", "read")


@pytest.fixture(scope="module")
def early_run(tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    torch.set_num_threads(2)
    recipe = Recipe(tmp_path_factory.mktemp("run"), RecipeConfig.quick(), progress=False)
    recipe.run(EARLY, out=None)
    return recipe


def _stage(recipe: Recipe, cfg: AlignConfig) -> AlignStage:
    models = recipe.models()
    models.unet.load_state_dict(recipe._stage_state("t2i")["unet"])
    models.text_encoder.load_state_dict(recipe._stage_state("read")["text_encoder"])
    return AlignStage(models, cfg, total=40, seed=3)


def test_target_captions_describe_the_target_and_leave_the_draws_alone() -> None:
    plain = diffusion.draw_examples(np.random.default_rng(5), 24, 0.7, pool=50, pool_seed=1)
    with_captions = diffusion.draw_examples(
        np.random.default_rng(5), 24, 0.7, pool=50, pool_seed=1, target_captions=np.random.default_rng(9)
    )

    def facts(e: diffusion.Example) -> tuple[object, ...]:
        return (e.task, e.prompt, e.target_key, e.source_key)

    assert [facts(e) for e in with_captions] == [facts(e) for e in plain]
    edits = 0
    for e in with_captions:
        if e.task == "generate":
            assert e.caption is None
            continue
        edits += 1
        assert e.caption is not None
        assert e.target_key is not None
        target = next(
            ed.target
            for ed in (world.train_edit(np.random.default_rng([1, 1, k])) for k in range(50))
            if ed.target.key() == e.target_key
        )
        orders = itertools.permutations(range(len(target.objects)))
        assert any(target.caption(list(o)) == e.caption for o in orders)
    assert edits > 0


def test_rows_mean_their_target_s_caption() -> None:
    examples = diffusion.draw_examples(
        np.random.default_rng(0), 16, 0.5, target_captions=np.random.default_rng(1)
    )
    ref, live = reference_requests(examples), requests(examples)
    for e, r, q in zip(examples, ref, live, strict=True):
        assert r.task == "generate"
        assert r.prompt == (e.caption if e.task == "edit" else e.prompt)
        assert (q.task, q.prompt) == (e.task, e.prompt)
        assert (q.image is e.source) if e.task == "edit" else q.image is None
    with pytest.raises(ValueError, match="target's caption"):
        reference_requests(diffusion.draw_examples(np.random.default_rng(0), 8, 1.0))


def test_caption_rows_start_at_zero_gap_and_edit_rows_do_not(early_run: Recipe) -> None:
    stage = _stage(early_run, AlignConfig(batch=8, caption_share=0.5))
    examples, _ = stage.batch(0)
    captions = [e for e in examples if e.task == "generate"]
    edits = [e for e in examples if e.task == "edit"]
    assert captions
    assert edits
    assert stage.heldout_gap(captions) == pytest.approx(0.0, abs=1e-10)  # the live encoder is the reference
    assert stage.heldout_gap(edits) > 0.0


def test_steps_lower_the_gap_train_only_the_encoder_and_resume(early_run: Recipe) -> None:
    stage = _stage(early_run, AlignConfig(batch=6, lr=3e-3, warmup=1, caption_share=0.0))
    unet_before = {k: v.clone() for k, v in stage.m.unet.state_dict().items()}
    ref_before = {k: v.clone() for k, v in stage.reference.state_dict().items()}
    enc_before = {k: v.clone() for k, v in stage.m.text_encoder.state_dict().items()}
    fixed, _ = stage.batch(0)
    before = stage.heldout_gap(fixed)
    stage.step(0)
    for _ in range(12):  # the step's own loss and gradient path, on one fixed batch
        loss = stage.gap(fixed, torch.Generator().manual_seed(0))
        stage.opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        stage.opt.step()
    assert stage.heldout_gap(fixed) < before
    assert all(torch.equal(v, stage.m.unet.state_dict()[k]) for k, v in unet_before.items())
    assert all(torch.equal(v, stage.reference.state_dict()[k]) for k, v in ref_before.items())
    assert any(not torch.equal(v, stage.m.text_encoder.state_dict()[k]) for k, v in enc_before.items())
    state = stage.state_dict()
    again = _stage(early_run, stage.cfg)
    again.load_state_dict(state)
    assert again.heldout_gap(fixed) == pytest.approx(stage.heldout_gap(fixed), rel=1e-6)


def test_an_encoder_frozen_by_an_earlier_stage_still_learns(early_run: Recipe) -> None:
    # The recipe benchmark shares one set of models across stages; distillation freezes the encoder.
    models = early_run.models()
    models.text_encoder.requires_grad_(False)
    stage = AlignStage(models, AlignConfig(batch=4, warmup=1, caption_share=0.0), total=4, seed=3)
    before = {k: v.clone() for k, v in models.text_encoder.state_dict().items()}
    stage.step(0)
    assert any(not torch.equal(v, models.text_encoder.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in stage.reference.parameters())


def test_the_edit_stage_starts_from_the_align_stage_s_encoder(tmp_path: Path, early_run: Recipe) -> None:
    for name in EARLY:
        src = early_run.run_dir / name
        (tmp_path / name).mkdir()
        for f in src.iterdir():
            (tmp_path / name / f.name).write_bytes(f.read_bytes())
    recipe = Recipe(tmp_path, replace(RecipeConfig.quick(), align_steps=2, copy_steps=0), progress=False)
    recipe.run(("align",), out=None)
    done = json.loads((tmp_path / "align" / "done.json").read_text())
    assert set(done["heldout_gap"]) == {"before", "after"}
    aligned = recipe._stage_state("align")["text_encoder"]
    read = recipe._stage_state("read")["text_encoder"]
    assert any(not torch.equal(aligned[k], read[k]) for k in aligned)
    assert recipe._reader() == "align"
    without = Recipe(tmp_path / "x", replace(RecipeConfig.quick(), align_steps=0), progress=False)
    assert without._reader() == "read"


def test_a_recipe_without_align_steps_skips_the_stage(tmp_path: Path) -> None:
    recipe = Recipe(tmp_path, replace(RecipeConfig.quick(), align_steps=0), progress=False)
    recipe.run_align()
    assert json.loads((tmp_path / "align" / "done.json").read_text()) == {"skipped": True}
    legacy = RecipeConfig().to_json()
    del legacy["align"], legacy["align_steps"]
    restored = RecipeConfig.from_json(legacy)  # a recipe.json written before the stage existed
    assert (restored.align_steps, restored.align) == (0, AlignConfig())
