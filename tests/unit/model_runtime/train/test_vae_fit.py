"""The VAE stage's hard colour pairs: the probe, the choice, the scenes, resume, and the shipped VAE."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.assets import default_model_dir
from model_runtime.train import vae_fit, world
from model_runtime.train.configs import NanoSizes
from model_runtime.train.recipe import RecipeConfig, setting_stage

PAIRS = len(world.COLOURS) * len(world.BACKGROUNDS)


def test_with_pair_sets_the_background_and_one_colour_keeping_colours_distinct() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = world.random_scene(rng)
        colour = str(rng.choice(list(world.COLOURS)))
        background = str(rng.choice(list(world.BACKGROUNDS)))
        out = vae_fit.with_pair(scene, (colour, background), rng)
        colours = [o.colour for o in out.objects]
        assert out.background == background
        assert colour in colours
        assert len(set(colours)) == len(colours)
        assert [(o.shape, o.size, o.position) for o in out.objects] == [
            (o.shape, o.size, o.position) for o in scene.objects
        ]
        before = [o.colour for o in scene.objects]
        if colour in before:  # swapped with the recoloured object
            assert sorted(colours) == sorted(before)
        else:  # one colour replaced
            assert set(colours) - set(before) == {colour}
            assert len(set(before) - set(colours)) == 1


def test_train_scenes_without_hard_pairs_are_the_plain_training_draws() -> None:
    plain_rng, rng = np.random.default_rng(5), np.random.default_rng(5)
    plain = [world.train_scene(plain_rng) for _ in range(32)]
    assert vae_fit.train_scenes(rng, 32, hard_share=0.5) == plain


def test_train_scenes_put_the_hard_share_on_pairs_drawn_by_probability() -> None:
    pairs = [("green", "black"), ("yellow", "white")]
    scenes = vae_fit.train_scenes(np.random.default_rng(1), 400, pairs, [0.5, 0.5], hard_share=0.5)
    on_pair = [
        any(s.background == b and any(o.colour == c for o in s.objects) for c, b in pairs) for s in scenes
    ]
    assert 0.45 < float(np.mean(on_pair)) < 0.7  # half forced, plus the plain draws that land there
    assert not any(world.is_heldout_scene(s) for s in scenes)
    every = vae_fit.train_scenes(np.random.default_rng(2), 50, pairs, [1.0, 0.0], hard_share=1.0)
    assert all(s.background == "black" and "green" in [o.colour for o in s.objects] for s in every)


def test_pair_probabilities_follow_the_squared_error() -> None:
    errors = {("red", "white"): 10.0, ("green", "black"): 30.0, ("blue", "gray"): 0.0}
    assert vae_fit.pair_probabilities(errors) == pytest.approx([0.1, 0.9, 0.0])
    assert vae_fit.pair_probabilities(dict.fromkeys(errors, 0.0)) == pytest.approx([1 / 3] * 3)


def test_hard_pairs_are_the_outliers_only() -> None:
    errors = {(c, b): 6.0 for c in world.COLOURS for b in world.BACKGROUNDS}
    assert vae_fit.hard_pairs(errors) == []
    errors[("green", "black")] = 56.0
    assert vae_fit.hard_pairs(errors) == [("green", "black")]
    early = {pair: 70.0 + i for i, pair in enumerate(errors)}  # all bad, none an outlier
    assert vae_fit.hard_pairs(early) == []


def test_pair_errors_measure_every_pair_and_leave_the_vae_training() -> None:
    torch.manual_seed(0)
    vae = vae_fit.build_vae(NanoSizes.test())
    vae.train()
    errors = vae_fit.pair_errors(vae)
    assert len(errors) == PAIRS
    assert all(0.0 <= e <= 255.0 for e in errors.values())
    assert vae.training


def test_the_stage_checks_records_and_resumes_its_pair_probabilities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = {(c, b): 5.0 for c in world.COLOURS for b in world.BACKGROUNDS}
    fake[("green", "black")] = 50.0
    monkeypatch.setattr(vae_fit, "pair_errors", lambda vae: fake)
    monkeypatch.setattr(vae_fit, "HARD_CHECK_EVERY", 2)
    torch.manual_seed(0)
    stage = vae_fit.VaeStage(vae_fit.build_vae(NanoSizes.test()), 4, batch=2, crop=32, hard_share=0.5)
    for i in range(3):
        stage.step(i)
    assert stage.pairs == list(fake)
    worst = 2500 / (2500 + 17 * 25)
    assert stage.probabilities[stage.pairs.index(("green", "black"))] == pytest.approx(worst)
    assert stage.hard_log == [
        {"step": 2, "worst": ["green", "black"], "error": 50.0, "probability": round(worst, 4), "median": 5.0}
    ]
    again = vae_fit.VaeStage(vae_fit.build_vae(NanoSizes.test()), 4, batch=2, crop=32, hard_share=0.5)
    again.load_state_dict(stage.state_dict())
    assert again.pairs == stage.pairs
    assert again.probabilities == stage.probabilities
    assert again.hard_log == stage.hard_log
    off = vae_fit.VaeStage(vae_fit.build_vae(NanoSizes.test()), 4, batch=2, crop=32, hard_share=0.0)
    for i in range(3):
        off.step(i)
    assert off.pairs == []
    assert off.hard_log == []


def test_the_recipe_turns_the_checks_on_and_reads_old_recipes_without_them() -> None:
    cfg = RecipeConfig()
    assert cfg.vae_hard_share == vae_fit.HARD_SHARE > 0
    old = cfg.to_json()
    del old["vae_hard_share"]
    assert RecipeConfig.from_json(json.loads(json.dumps(old))).vae_hard_share == 0.0
    assert setting_stage("vae_hard_share") == "vae"


def test_the_shipped_vae_draws_every_colour_on_every_background() -> None:
    from diffusers import AutoencoderTiny

    folder: Path = default_model_dir() / "vae"
    vae = AutoencoderTiny.from_pretrained(str(folder)).float().eval()  # type: ignore[no-untyped-call]
    errors = vae_fit.pair_errors(vae)
    assert vae_fit.hard_pairs(errors) == [], errors
    assert max(errors.values()) < vae_fit.HARD_MIN_LEVELS, errors


def test_the_vae_is_silu_and_a_recipe_written_before_reads_as_relu() -> None:
    from model_runtime.train.configs import vae_config

    assert vae_config(NanoSizes())["act_fn"] == "silu"
    assert isinstance(vae_fit.build_vae(NanoSizes.test()).encoder.layers[1].conv[1], torch.nn.SiLU)
    legacy = RecipeConfig().to_json()
    del legacy["sizes"]["vae_act_fn"]
    sizes = RecipeConfig.from_json(json.loads(json.dumps(legacy))).sizes
    assert vae_config(sizes)["act_fn"] == "relu"


def test_the_fuse_leaks_while_the_fit_takes_shape_and_is_the_relu_after() -> None:
    total = 30
    end = int(vae_fit.LEAK_UNTIL * total)
    slopes = [vae_fit.fuse_slope(i, total, 0.1) for i in range(total)]
    assert slopes[0] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(slopes[:end]))  # falling
    assert slopes[end:] == [0.0] * (total - end)
    assert [vae_fit.fuse_slope(i, total, 0.0) for i in range(total)] == [0.0] * total


def test_a_leaky_fuse_passes_gradient_where_the_relu_is_dead_and_keeps_the_state_dict() -> None:
    torch.manual_seed(0)
    vae = vae_fit.build_vae(NanoSizes.test())
    block = next(m for m in vae.modules() if type(m).__name__ == "AutoencoderTinyBlock")
    keys = set(vae.state_dict())
    x = -torch.ones(1, block.conv[0].in_channels, 4, 4)  # (1, C, 4, 4)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block.conv[-1].bias.fill_(-1.0)  # every unit off: the ReLU's output is 0 with no gradient
    for slope, alive in ((0.0, False), (0.2, True)):
        vae_fit.set_fuse_slope(vae, slope)
        block.zero_grad()
        block(x).sum().backward()
        assert bool(block.conv[-1].bias.grad.abs().sum() > 0) is alive
    assert set(vae.state_dict()) == keys
    vae_fit.set_fuse_slope(vae, 0.0)
    assert all(
        type(m.fuse) is torch.nn.ReLU for m in vae.modules() if type(m).__name__ == "AutoencoderTinyBlock"
    )


def test_the_stage_trains_leaky_checks_and_ends_each_step_with_the_relu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[float] = []

    def errors(vae: object) -> dict[tuple[str, str], float]:
        seen.extend(
            float(getattr(m.fuse, "negative_slope", 0.0))
            for m in vae.modules()  # type: ignore[attr-defined]
            if type(m).__name__ == "AutoencoderTinyBlock"
        )
        return {(c, b): 5.0 for c in world.COLOURS for b in world.BACKGROUNDS}

    monkeypatch.setattr(vae_fit, "pair_errors", errors)
    monkeypatch.setattr(vae_fit, "HARD_CHECK_EVERY", 1)
    torch.manual_seed(0)
    stage = vae_fit.VaeStage(
        vae_fit.build_vae(NanoSizes.test()), 6, batch=2, crop=32, hard_share=0.5, leak=0.1
    )
    for i in range(3):
        stage.step(i)
        assert all(
            type(m.fuse) is torch.nn.ReLU
            for m in stage.vae.modules()
            if type(m).__name__ == "AutoencoderTinyBlock"
        )
    assert seen
    assert set(seen) == {0.0}  # the checks measure the served (ReLU) model
    cfg = RecipeConfig()
    assert cfg.vae_stage(vae_fit.build_vae(NanoSizes.test())).leak == vae_fit.LEAK > 0
    old = cfg.to_json()
    del old["vae_leak"]
    assert RecipeConfig.from_json(json.loads(json.dumps(old))).vae_leak == 0.0
    assert setting_stage("vae_leak") == "vae"
