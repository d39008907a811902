"""The text stage: scene labels are right, and the readout loss falls on a fixed batch of both tasks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from model_runtime.train import text_pretrain, world
from model_runtime.train.recipe import Recipe, RecipeConfig
from model_runtime.train.world import Scene, ShapeObject


def test_scene_labels_name_each_slot_and_the_background() -> None:
    scene = Scene(
        (ShapeObject("star", "blue", "large", "top"), ShapeObject("circle", "red", "small", "centre")),
        "gray",
    )
    flat, bg = text_pretrain.scene_labels(scene)
    slots = np.asarray(flat).reshape(5, 3)
    assert world.BACKGROUND_NAMES[bg] == "gray"
    for o in scene.objects:
        c, s, z = slots[world.POSITIONS.index(o.position)]
        assert (world.COLOUR_NAMES[c - 1], world.SHAPES[s - 1], world.SIZES[z - 1]) == (
            o.colour,
            o.shape,
            o.size,
        )
    empty = [p for p in world.POSITIONS if p not in ("top", "centre")]
    assert all((slots[world.POSITIONS.index(p)] == 0).all() for p in empty)


def test_edit_items_ask_for_the_target_scene() -> None:
    items = text_pretrain.draw_items(np.random.default_rng(0), 16, edit_share=1.0)
    for it in items:
        assert it.request.task == "edit"
        assert it.request.image is not None
        assert not np.array_equal(
            it.request.image, world.render(it.scene)
        )  # the source differs from the target


def test_vision_cells_belong_to_the_slot_they_cover() -> None:
    cells = text_pretrain.cell_slots(128)  # 4×4 merged tokens of 32 px
    assert cells == [
        *[None, "top", "top", None],
        *["left", "centre", "centre", "right"],
        *["left", "centre", "centre", "right"],
        *[None, "bottom", "bottom", None],
    ]


@pytest.fixture(scope="module")
def text_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    from model_runtime.train.models import build_text_encoder

    torch.set_num_threads(2)
    recipe = Recipe(tmp_path_factory.mktemp("run"), RecipeConfig.quick(), progress=False)
    recipe.run(("tokenizer",))
    return recipe, recipe.featurizer(), build_text_encoder(recipe.cfg.sizes, recipe.tokenizer(), seed=0)


def test_token_labels_mark_position_words_and_source_cells(text_parts: tuple[Any, Any, Any]) -> None:
    recipe, featurizer, _ = text_parts
    tok = recipe.tokenizer()
    rng = np.random.default_rng(3)
    items = text_pretrain.draw_items(rng, 6, edit_share=0.0) + text_pretrain.draw_items(
        rng, 6, edit_share=1.0
    )
    length = max(len(featurizer.kept_ids(it.request)) for it in items)
    labels = text_pretrain.phrase_labels(featurizer, items, length, read_images=True)
    plain = text_pretrain.phrase_labels(featurizer, items, length, read_images=False)
    for b, it in enumerate(items):
        ids = featurizer.kept_ids(it.request)
        marked = [k for k in range(length) if labels[b, k, 0] >= 0]
        if it.request.task == "generate":
            words = [tok.id_to_token(ids[k]).lstrip("Ġ") for k in marked]
            assert sorted(words) == sorted(o.position for o in it.scene.objects)
            for k, w in zip(marked, words, strict=True):
                (o,) = [o for o in it.scene.objects if o.position == w]
                assert world.COLOUR_NAMES[int(labels[b, k, 0]) - 1] == o.colour
                assert world.SHAPES[int(labels[b, k, 1]) - 1] == o.shape
        else:
            assert it.source is not None
            cells = text_pretrain.cell_slots(featurizer.vlm_size[0])
            owned = [c for c in cells if c is not None]
            assert [tok.id_to_token(ids[k]) for k in marked] == ["<|image_pad|>"] * len(owned)
            by_slot = {o.position: o for o in it.source.objects}
            for k, slot in zip(marked, owned, strict=True):
                o = by_slot.get(slot)
                want = 0 if o is None else world.COLOUR_NAMES.index(o.colour) + 1
                assert int(labels[b, k, 0]) == want
            assert (plain[b, :, 0] == -100).all()  # without read_images edit rows carry no token targets


def test_readout_loss_falls_on_a_fixed_batch(text_parts: tuple[Any, Any, Any]) -> None:
    _, featurizer, encoder = text_parts
    stage = text_pretrain.TextPretrainStage(
        encoder, featurizer, text_pretrain.TextPretrainConfig(lr=3e-3), 30, 0
    )
    items = text_pretrain.draw_items(np.random.default_rng(1), 8, edit_share=0.5)
    losses = []
    for _ in range(30):
        feats, mask = featurizer.encode_mixed(encoder, [it.request for it in items])
        labels = text_pretrain.phrase_labels(featurizer, items, feats.shape[1], read_images=True)
        loss, _ = text_pretrain.readout_loss(stage.readout, feats, mask, [it.scene for it in items], labels)
        stage.opt.zero_grad()
        loss.backward()
        stage.opt.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]
