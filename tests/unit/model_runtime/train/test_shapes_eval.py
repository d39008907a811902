"""ShapesEval: ground-truth renders score 1.0, wrong images score low, the prompt sets are fixed."""

from __future__ import annotations

import numpy as np

from model_runtime.train import shapes_eval as se
from model_runtime.train import world


def test_prompt_sets_are_fixed_sized_and_split() -> None:
    for split in se.SPLITS:
        gen, edits = se.generate_items(split), se.edit_items(split)
        assert len(gen) >= 144
        assert len(edits) >= 144
        assert len({g.prompt for g in gen}) == len(gen)
        held = split == "heldout"
        assert all(world.is_heldout_scene(g.scene) == held for g in gen)
        assert all(world.is_heldout_edit(e.edit) == held for e in edits)
        assert {len(g.scene.objects) for g in gen} == {1, 2, 3}
        assert {e.edit.kind for e in edits} == set(world.EDIT_KINDS)
    se.generate_items.cache_clear()
    assert se.generate_items("heldout")[5].prompt == se.generate_items("heldout")[5].prompt


def test_ground_truth_scores_one() -> None:
    report = se.evaluate(se.ground_truth_image_fn(), split="heldout", seeds=(0,), limit=24)
    assert report.generate["overall"] == 1.0
    assert report.generate["exact"] == 1.0
    assert all(v == 1.0 for v in report.edit.values())


def test_wrong_images_score_low() -> None:
    rng = np.random.default_rng(5)

    def other(_img: np.ndarray) -> np.ndarray:
        return world.render(world.random_scene(rng))

    report = se.evaluate(se.ground_truth_image_fn(other), split="heldout", seeds=(0,), limit=24)
    assert report.generate["overall"] < 0.6
    assert report.generate["exact"] < 0.1
    assert report.edit["overall"] < 0.2


def test_unedited_source_fails_every_instruction() -> None:
    def source(requests):  # type: ignore[no-untyped-def]
        return [r.image for r in requests]

    report = se.evaluate(source, split="heldout", tasks=("edit",), seeds=(0,), limit=24)
    assert report.edit["overall"] == 0.0


def test_edits_as_captions_generates_each_target_scene() -> None:
    seen: list[se.EvalRequest] = []

    def record(requests):  # type: ignore[no-untyped-def]
        seen.extend(requests)
        return [world.render(r.expected) for r in requests]

    report = se.evaluate(se.edits_as_captions(record), split="heldout", seeds=(7,), limit=12)
    edits = [it.edit for it in se.edit_items("heldout")]
    recast = seen[-12:]  # the edit part runs after the generate part
    assert all(r.task == "generate" and r.image is None and r.seed == 7 for r in seen)
    assert {r.prompt for r in recast} <= {e.target.caption() for e in edits}
    assert all(r.prompt == r.expected.caption() for r in recast)
    assert report.edit["overall"] == 1.0


def test_analysis_of_a_known_scene() -> None:
    obj = world.ShapeObject("star", "purple", "small", "top")
    other = world.ShapeObject("square", "orange", "large", "right")
    scene = world.Scene((obj, other), "gray")
    found = se.analyse(world.render(scene))
    assert found.background == "gray"
    got = {(d.colour, d.shape, d.size, d.position) for d in found.detections}
    assert got == {("purple", "star", "small", "top"), ("orange", "square", "large", "right")}
    scores = se.score_generate(scene, found)
    assert scores["overall"] == 1.0
    # a binding error: colours swapped between the shapes
    swapped = world.Scene(
        (
            world.ShapeObject("star", "orange", "small", "top"),
            world.ShapeObject("square", "purple", "large", "right"),
        ),
        "gray",
    )
    bad = se.score_generate(scene, se.analyse(world.render(swapped)))
    assert bad["count"] == 1.0
    assert bad["exact"] == 0.0
    assert min(bad["colour"], bad["shape"]) < 1.0
