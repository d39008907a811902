"""The ``scene`` stage, tiny: its target features, its loss, its resume and its place in the recipe."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.backends.torch_backend import whole_rows
from model_runtime.train import world
from model_runtime.train.diffusion import NanoModels
from model_runtime.train.loop import run_stage
from model_runtime.train.recipe import Recipe, RecipeConfig
from model_runtime.train.scene import (
    SCENE_ROWS,
    SceneConfig,
    SceneStage,
    SceneTargets,
    changed_slots,
    diptych_rows,
    edit_lengths,
    edit_requests,
    layer_states,
)
from model_runtime.train.text_features import TextRequest

Run = tuple[Recipe, Path, dict[str, float]]


def _student(recipe: Recipe) -> NanoModels:
    """The quick run's distilled student, as the scene stage reads it."""
    return NanoModels.from_folder(recipe.run_dir / "student")


def _edits(seed: int, n: int) -> list[world.Edit]:
    rng = np.random.default_rng(seed)
    return [world.train_edit(rng) for _ in range(n)]


def test_targets_say_each_slot_and_the_background_in_caption_language_and_nothing_else(
    quick_run: Run,
) -> None:
    from tokenizers import Tokenizer

    recipe, _, _ = quick_run
    m = _student(recipe)
    targets = SceneTargets(m.featurizer)
    tok = Tokenizer.from_file(str(m.featurizer.tokenizer_file))
    edits = _edits(0, 12)
    n = edit_lengths(m.featurizer, edits)
    with torch.no_grad():
        own, mask = m.featurizer(m.text_encoder, edit_requests(edits))  # (B, L, D)
    assert [int(k) for k in mask.sum(1)] == n  # the lengths are the requests' own kept rows
    want = targets(m.text_encoder, [e.target for e in edits], n, own.shape[1])  # (B, L, D)
    first = None
    for b, e in enumerate(edits):
        caption = e.target.caption()
        with torch.no_grad():
            cap, _ = m.featurizer(m.text_encoder, [TextRequest("generate", caption)])  # (1, Lc, D)
        ids = m.featurizer.kept_ids(TextRequest("generate", caption))
        words = [tok.id_to_token(t) for t in ids]
        neutral = cap[0, 0]
        first = neutral if first is None else first
        torch.testing.assert_close(neutral, first)  # the same first kept row in every caption
        by_slot = {o.position: o for o in e.target.objects}
        for j, pos in enumerate(world.POSITIONS):
            row = want[b, n[b] - SCENE_ROWS + j]
            if pos in by_slot:
                torch.testing.assert_close(row, cap[0, words.index("Ġ" + pos)])
            else:
                torch.testing.assert_close(row, neutral)
        bg = len(words) - 1 - words[::-1].index("Ġ" + e.target.background)
        torch.testing.assert_close(want[b, n[b] - 1], cap[0, bg])
        for r in range(n[b] - SCENE_ROWS):
            torch.testing.assert_close(want[b, r], neutral)
    with pytest.raises(ValueError, match="bg_word"):
        SceneTargets(m.featurizer, bg_word="sky")


def test_the_stage_lowers_the_scene_error_and_keeps_captions_near_the_reference(quick_run: Run) -> None:
    recipe, _, _ = quick_run
    m = _student(recipe)
    stage = SceneStage(m.text_encoder, m.unet, m.featurizer, SceneConfig(batch=8, captions=4, lr=3e-3), 30, 7)
    held, scenes = _edits(99, 16), [e.target for e in _edits(98, 16)]
    before = stage.heldout_error(held, scenes)
    assert before["caption_drift"] == 0.0  # the reference is the starting encoder
    losses = [stage.step(i) for i in range(30)]
    after = stage.heldout_error(held, scenes)
    assert all(np.isfinite(v) for row in losses for v in row.values())
    assert after["scene"] < 0.8 * before["scene"]
    assert after["caption_drift"] < 0.5 * after["scene"]
    unet_before = _student(recipe).unet.state_dict()
    for key, value in m.unet.state_dict().items():  # the UNet is only read
        assert torch.equal(value, unet_before[key]), key


def test_changed_rows_weigh_more_only_when_asked(quick_run: Run) -> None:
    recipe, _, _ = quick_run
    m = _student(recipe)
    rng = np.random.default_rng(3)
    pool = [world.train_edit(rng) for _ in range(400)]
    colour = [e for e in pool if e.kind == "colour"][:6]
    background = [e for e in pool if e.kind == "background"][:6]

    def stage(scale: float) -> SceneStage:
        cfg = SceneConfig(changed_scale=scale)
        return SceneStage(m.text_encoder, m.unet, m.featurizer, cfg, 1, 0)

    with torch.no_grad():
        plain = stage(0.0)
        assert torch.equal(plain.edit_error(colour, weighted=True)[0], plain.edit_error(colour)[0])
        assert all(changed_slots(e)[-1] and sum(changed_slots(e)) == 1 for e in background)
        assert all(sum(changed_slots(e)) == 1 for e in colour)
        # a background change is a large one: a small scale leaves every weight at 1
        small = stage(1e-3)
        assert torch.equal(small.edit_error(background, weighted=True)[0], small.edit_error(background)[0])
        # a colour change is one changed row per edit: a large scale weighs it 10 (the clip)
        big = stage(100.0)
        n = edit_lengths(m.featurizer, colour)
        feats, _ = m.featurizer(m.text_encoder, edit_requests(colour))
        want = big.targets(big.reference, [e.target for e in colour], n, feats.shape[1])
        per_row = big.row_error(feats, want)
        num = den = 0.0
        for b, e in enumerate(colour):
            changed = world.POSITIONS.index(e.subject.position)  # type: ignore[union-attr]
            for j in range(SCENE_ROWS):
                w = 10.0 if j == changed else 1.0
                num += w * float(per_row[b, n[b] - SCENE_ROWS + j])
                den += w
        got = float(big.edit_error(colour, weighted=True)[0])
        assert got == pytest.approx(num / den, rel=1e-5)
        assert got != pytest.approx(float(big.edit_error(colour)[0]), rel=1e-3)


def _assert_readout_term(on: SceneStage, plain: dict[str, float], first: dict[str, float], key: str) -> None:
    """A readout at weight 0.5 (``on``) adds only its loss term to a plain step, and that term falls."""
    assert key not in plain
    assert {key, f"{key}_exact"} <= set(first)
    for name in ("scene", "neutral", "caption_drift"):  # the same forward; only the loss gains a term
        assert first[name] == pytest.approx(plain[name], rel=1e-6)
    assert first["loss"] == pytest.approx(plain["loss"] + 0.5 * first[key], rel=1e-5)
    logged = [first] + [on.step(i) for i in range(1, 40)]
    early = np.mean([r[key] for r in logged[:5]])
    late = np.mean([r[key] for r in logged[-5:]])
    assert late < 0.8 * early


def test_the_source_readout_asks_the_diptych_rows_for_the_source(quick_run: Run) -> None:
    from tokenizers import Tokenizer

    recipe, _, _ = quick_run
    m = _student(recipe)
    tok = Tokenizer.from_file(str(m.featurizer.tokenizer_file))
    vision_end = tok.token_to_id("<|vision_end|>")
    rows = diptych_rows(m.featurizer, vision_end)
    edits = _edits(11, 6)
    drop = m.featurizer.drop_idx["edit"]
    for req in edit_requests(edits):  # the same diptych words at the same places, before any instruction
        ids = m.featurizer.kept_ids(req)
        assert ids[rows[0] - drop - 1] == vision_end
        words = [tok.id_to_token(ids[r - drop]) for r in rows]
        assert words == ["[Edit", "]:", "ĠA", "Ġdiptych", "Ġwith", "Ġtwo"][: len(rows)]
    layer = 0  # the quick model's encoder has one decoder layer
    states = {}
    for fast in (False, True):  # one call of the layer, or the shared prefix and the rest
        m.featurizer.fast = fast
        with torch.no_grad(), layer_states(m.text_encoder, layer) as captured:
            m.featurizer(m.text_encoder, edit_requests(edits))
        assert len(captured) == (2 if fast else 1)
        states[fast] = whole_rows(captured)[:, rows]  # (B, 6, D)
    m.featurizer.fast = False
    torch.testing.assert_close(states[True], states[False], rtol=1e-5, atol=1e-4)

    def stage(weight: float) -> SceneStage:
        fresh = _student(recipe)
        cfg = SceneConfig(batch=8, captions=2, lr=3e-3, warmup=1, source_read=weight, source_read_layer=layer)
        return SceneStage(fresh.text_encoder, fresh.unet, fresh.featurizer, cfg, 40, 3)

    with pytest.raises(ValueError, match="source_read_layer: expected 0 to 0"):
        SceneStage(
            m.text_encoder, m.unet, m.featurizer, SceneConfig(source_read=1.0, source_read_layer=1), 1, 0
        )
    off, on = stage(0.0), stage(0.5)
    plain, first = off.step(0), on.step(0)
    assert off.readout is None
    _assert_readout_term(on, plain, first, "source_read")  # the diptych rows learn to say the source


@pytest.mark.parametrize("source_read", [0.0, 0.5])
def test_a_resumed_stage_continues_exactly(quick_run: Run, tmp_path: Path, source_read: float) -> None:
    recipe, _, _ = quick_run
    cfg = SceneConfig(batch=4, captions=2, warmup=1, source_read=source_read, source_read_layer=0)

    def stage() -> SceneStage:
        m = _student(recipe)
        return SceneStage(m.text_encoder, m.unet, m.featurizer, cfg, 4, seed=5)

    straight = stage()
    run_stage(straight, "scene", 4, tmp_path / "a", progress=False)
    first = stage()
    run_stage(first, "scene", 2, tmp_path / "b", progress=False)  # interrupted after 2 of 4 steps
    resumed = stage()  # rebuilt from the folder: its reference is the starting encoder again
    run_stage(resumed, "scene", 4, tmp_path / "b", progress=False)
    for (key, a), b in zip(straight.enc.state_dict().items(), resumed.enc.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=key)


def test_the_recipe_writes_student_and_teacher_with_the_new_encoder(quick_run: Run) -> None:
    from model_runtime import open_model_folder

    recipe, out, _ = quick_run
    run = recipe.run_dir
    done = json.loads((run / "scene" / "done.json").read_text())
    assert set(done["heldout_error"]["before"]) == {"scene", "neutral", "caption_drift"}
    for name in ("student", "teacher"):
        before, after = run / name, run / "scene" / name
        assert json.loads((after / "dreamlite.json").read_text()) == json.loads(
            (before / "dreamlite.json").read_text()
        )  # variant, steps, guidance and drop_idx kept
        assert (after / "tokenizer" / "tokenizer.json").read_bytes() == (
            before / "tokenizer" / "tokenizer.json"
        ).read_bytes()
        old, new = NanoModels.from_folder(before), NanoModels.from_folder(after)
        for key, value in old.unet.state_dict().items():
            assert torch.equal(value, new.unet.state_dict()[key]), key
        changed = [
            not torch.equal(a, b)
            for a, b in zip(
                old.text_encoder.state_dict().values(), new.text_encoder.state_dict().values(), strict=True
            )
        ]
        assert any(changed)
        unet_file = after / "unet" / "diffusion_pytorch_model.safetensors"
        assert (
            unet_file.read_bytes() == (before / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
        )
    assert open_model_folder(run / "scene" / "teacher").config.variant == "base"
    # the output folder (the caption_teacher stage's student, which changes only the UNet) has its encoder
    assert (out / "text_encoder" / "model.safetensors").read_bytes() == (
        run / "scene" / "student" / "text_encoder" / "model.safetensors"
    ).read_bytes()


def test_a_recipe_without_later_steps_ships_the_distilled_student(
    quick_run: Run, branch_run: Callable[..., Path], tmp_path: Path
) -> None:
    recipe, _, _ = quick_run
    run = branch_run("scene", "caption_teacher")
    (run / "distill" / "done.json").unlink()  # distill again (its checkpoint is complete: no steps)
    cfg = replace(recipe.cfg, scene_steps=0, caption_teacher_steps=0)
    out = tmp_path / "model"
    Recipe(run, cfg, progress=False).run(("distill", "scene", "caption_teacher"), out=out)
    for stage in ("scene", "caption_teacher"):
        assert json.loads((run / stage / "done.json").read_text()) == {"skipped": True}
    assert (out / "text_encoder" / "model.safetensors").read_bytes() == (
        run / "student" / "text_encoder" / "model.safetensors"
    ).read_bytes()


def test_a_recipe_written_before_the_scene_stage_has_none() -> None:
    legacy = RecipeConfig().to_json()
    del legacy["scene"], legacy["scene_steps"]
    assert RecipeConfig.from_json(legacy) == replace(RecipeConfig(), scene_steps=0)


def test_the_target_readout_asks_the_closing_rows_for_the_edited_scene(quick_run: Run) -> None:
    recipe, _, _ = quick_run
    m = _student(recipe)
    edits = _edits(13, 6)
    drop = m.featurizer.drop_idx["edit"]
    n = edit_lengths(m.featurizer, edits)
    with torch.no_grad(), layer_states(m.text_encoder, 0) as captured:
        feats, _ = m.featurizer(m.text_encoder, edit_requests(edits))  # (B, L, D)
    full = whole_rows(captured)  # (B, T, D) the layer's rows before the template drop
    for b, k in enumerate(n):  # with one layer, its output is the features: the closing rows line up
        torch.testing.assert_close(full[b, drop + k - SCENE_ROWS : drop + k], feats[b, k - SCENE_ROWS : k])

    def stage(weight: float) -> SceneStage:
        fresh = _student(recipe)
        cfg = SceneConfig(batch=8, captions=2, lr=3e-3, warmup=1, target_read=weight, target_read_layer=0)
        return SceneStage(fresh.text_encoder, fresh.unet, fresh.featurizer, cfg, 40, 3)

    with pytest.raises(ValueError, match="target_read_layer: expected 0 to 0"):
        SceneStage(m.text_encoder, m.unet, m.featurizer, SceneConfig(target_read=1.0), 1, 0)
    off, on = stage(0.0), stage(0.5)
    plain, first = off.step(0), on.step(0)
    assert off.target_readout is None
    _assert_readout_term(on, plain, first, "target_read")  # the closing rows learn to name the edited scene
