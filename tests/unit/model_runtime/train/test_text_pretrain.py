"""The text stage: scene labels are right, and the readout loss falls on a fixed batch of both tasks."""

from __future__ import annotations

import dataclasses
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


def _parts(run: Any, image_features: bool) -> tuple[Any, Any, Any]:
    from model_runtime.train.models import build_text_encoder

    torch.set_num_threads(2)
    cfg = dataclasses.replace(RecipeConfig.quick(), edit_image_features=image_features)
    recipe = Recipe(run, cfg, progress=False)
    recipe.run(("tokenizer",))
    return recipe, recipe.featurizer(), build_text_encoder(recipe.cfg.sizes, recipe.tokenizer(), seed=0)


@pytest.fixture(scope="module")
def text_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    """The shipped recipe's text stage: the image tokens are edit feature rows (the official drop)."""
    return _parts(tmp_path_factory.mktemp("run"), image_features=True)


@pytest.fixture(scope="module")
def text_only_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    """``edit_image_features`` False: the edit features start after the image tokens."""
    return _parts(tmp_path_factory.mktemp("text_only"), image_features=False)


def test_edit_features_start_after_the_image_and_its_states_are_read_apart(
    text_parts: tuple[Any, Any, Any], text_only_parts: tuple[Any, Any, Any]
) -> None:
    recipe, featurizer, encoder = text_only_parts
    _, legacy, _ = text_parts
    tok = recipe.tokenizer()
    assert not featurizer.keeps_image_tokens()
    assert legacy.keeps_image_tokens()
    items = text_pretrain.draw_items(np.random.default_rng(4), 4, edit_share=1.0)
    ids, old_ids = featurizer.kept_ids(items[0].request), legacy.kept_ids(items[0].request)
    # the same template: the new features are the legacy ones after <|vision_start|> … <|vision_end|>
    assert tok.id_to_token(old_ids[0]) == "<|vision_start|>"
    assert tuple(old_ids[len(old_ids) - len(ids) :]) == tuple(ids)
    assert featurizer.image_pad_id() not in ids
    feats, _, images = featurizer.encode_mixed_images(encoder, [it.request for it in items])
    old_feats, _, old_images = legacy.encode_mixed_images(encoder, [it.request for it in items])
    n = images.shape[1]
    assert n == sum(1 for t in old_ids if t == featurizer.image_pad_id())
    # the image states are the rows the legacy drop kept, and the kept rows are the same states
    torch.testing.assert_close(images, old_images)
    torch.testing.assert_close(images, old_feats[:, 1 : 1 + n])
    torch.testing.assert_close(feats[:, : len(ids)], old_feats[:, n + 2 : n + 2 + len(ids)])
    # per-image-token targets: the source object at each cell's slot, as the legacy rows carried them
    labels = text_pretrain.image_labels(featurizer, items, n)
    old = text_pretrain.phrase_labels(legacy, items, old_feats.shape[1], read_images=True)
    assert torch.equal(labels, old[:, 1 : 1 + n])
    assert (text_pretrain.phrase_labels(featurizer, items, feats.shape[1], read_images=True) == -100).all()


def test_read_stage_trains_the_image_states_outside_the_features(
    text_only_parts: tuple[Any, Any, Any],
) -> None:
    """Without image rows in the features the per-token head still reaches the vision tower."""
    recipe, featurizer, _ = text_only_parts
    from model_runtime.train.models import build_text_encoder

    encoder = build_text_encoder(recipe.cfg.sizes, recipe.tokenizer(), seed=0)
    items = text_pretrain.draw_items(np.random.default_rng(5), 6, edit_share=1.0)
    grads = {}
    for read_images in (False, True):
        stage = text_pretrain.TextPretrainStage(
            encoder, featurizer, text_pretrain.TextPretrainConfig(read_images=read_images), 10, 0
        )
        feats, mask, images = featurizer.encode_mixed_images(encoder, [it.request for it in items])
        labels = text_pretrain.image_labels(featurizer, items, images.shape[1]) if read_images else None
        loss, _ = text_pretrain.readout_loss(
            stage.readout, feats, mask, [it.scene for it in items], None, images, labels
        )
        encoder.zero_grad()
        loss.backward()
        grad = stage.readout.token_head.weight.grad
        grads[read_images] = 0.0 if grad is None else float(grad.abs().sum())
    assert grads[False] == 0.0  # edit rows alone: no per-token target in the features
    assert grads[True] > 0.0


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
