"""The shapes world: deterministic from a seed, captions and edits consistent with the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from model_runtime.train import world
from model_runtime.train.world import BACKGROUNDS, COLOURS, EDIT_KINDS, SLOTS


def _pixel(image: np.ndarray, xy: tuple[float, float]) -> tuple[int, ...]:
    return tuple(int(v) for v in image[int(xy[1]), int(xy[0])])


def test_same_seed_same_scenes_renders_and_edits() -> None:
    a, b = np.random.default_rng(123), np.random.default_rng(123)
    for _ in range(20):
        sa, sb = world.random_scene(a), world.random_scene(b)
        assert sa == sb
        assert np.array_equal(world.render(sa), world.render(sb))
        ea, eb = world.random_edit(a), world.random_edit(b)
        assert ea == eb
        assert ea.instruction == eb.instruction


def test_scene_rules_and_caption_match_pixels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        scene = world.random_scene(rng)
        assert 1 <= len(scene.objects) <= 3
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        assert len({o.position for o in scene.objects}) == len(scene.objects)
        image = world.render(scene)
        assert image.shape == (128, 128, 3)
        assert image.dtype == np.uint8
        assert _pixel(image, (1, 1)) == BACKGROUNDS[scene.background]
        caption = scene.caption()
        assert caption.endswith(f"on a {scene.background} background")
        for obj in scene.objects:
            assert obj.phrase() in caption
            assert _pixel(image, SLOTS[obj.position]) == COLOURS[obj.colour]  # the slot centre is inside


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edit_changes_exactly_the_named_fact(kind: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        edit = world.random_edit(rng, kind)  # type: ignore[arg-type]
        src, tgt = edit.source, edit.target
        kept = set(src.objects) & set(tgt.objects)
        if kind == "background":
            assert src.objects == tgt.objects
            assert src.background != tgt.background
            assert tgt.background in edit.instruction
            continue
        assert src.background == tgt.background
        assert edit.subject is not None
        if kind == "add":
            assert len(tgt.objects) == len(src.objects) + 1
            assert kept == set(src.objects)
            assert edit.subject.phrase() in edit.instruction
        elif kind == "remove":
            assert len(tgt.objects) == len(src.objects) - 1
            assert edit.subject not in tgt.objects
            assert edit.subject.name() in edit.instruction
        else:
            assert len(kept) == len(src.objects) - 1
            (new,) = set(tgt.objects) - kept
            old = edit.subject
            changed = [
                f for f in ("shape", "colour", "size", "position") if getattr(new, f) != getattr(old, f)
            ]
            assert changed == [{"colour": "colour", "shape": "shape", "move": "position"}[kind]]
            assert old.name() in edit.instruction
        # pixels outside the edited object's slot are untouched
        a, b = world.render(src), world.render(tgt)
        for obj in kept:
            assert _pixel(a, SLOTS[obj.position]) == _pixel(b, SLOTS[obj.position])


def test_heldout_split_is_stable_and_excluded_from_training() -> None:
    rng = np.random.default_rng(2)
    scenes = [world.random_scene(rng) for _ in range(400)]
    share = np.mean([world.is_heldout_scene(s) for s in scenes])
    assert 0.05 < share < 0.25
    train_rng = np.random.default_rng(3)
    assert not any(world.is_heldout_scene(world.train_scene(train_rng)) for _ in range(200))
    assert not any(world.is_heldout_edit(world.train_edit(train_rng)) for _ in range(200))
