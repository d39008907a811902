"""ShapesEval: a programmatic scorer for the shapes world, with fixed prompt sets and a held-out split.

**Analysis** of one 128×128 image (no learned parts):

1. Background: the median of a 3-pixel border frame, named by the nearest background colour.
2. Object pixels: farther than ``FG_DISTANCE`` from the measured background *and* within ``CORE_DISTANCE`` of
   a palette colour (anti-aliased fringes and off-palette smears are not object pixels).
3. Objects: 4-connected components of same-colour object pixels with at least ``MIN_AREA`` pixels.
4. Per object: the colour is the component's palette colour; the position is the nearest slot to its
   centroid (none if farther than ``MAX_SLOT_DISTANCE``); the shape is the template (circle, square,
   triangle, star at the component's area, centroid-aligned) with the highest IoU (unknown below
   ``MIN_SHAPE_IOU``); the size is small/large by area against calibrated ground-truth areas.

**Generate score** of an image against the prompt's scene: prompted objects are assigned to detected
objects (the injective assignment that matches most attributes); per category, ``colour``, ``shape``,
``size`` and ``position`` are the fraction of prompted objects whose attribute matches; ``count`` is 1 when
exactly as many objects were detected as prompted; ``background`` is 1 when it matches. A prompt's overall
score is the mean of its six categories; ``exact`` is 1 when everything matches.

**Edit score** of an output against the edit triple: ``instruction`` (0/1) checks the requested change
(the new/changed object is detected with its colour, shape and position; a removed or recoloured
object's old colour is gone; a moved object is not left at its old slot; the new background is
detected); ``preserve`` is the fraction of the other facts that still hold (every untouched object with
colour, shape, position and size; the background; the object count). The sample score is
``instruction × preserve``: the instruction must be satisfied *and* the rest preserved. Categories are the
six edit kinds.

**Prompt sets** are fixed: 144 generate prompts (48 each with 1, 2, 3 objects) and 144 edit triples (24 per
kind) per split, each run with 2 seeds, drawn from fixed seeds so they never change between runs.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from model_runtime.train import world
from model_runtime.train.world import (
    BACKGROUNDS,
    COLOURS,
    EDIT_KINDS,
    SHAPES,
    SLOTS,
    Edit,
    Scene,
    ShapeObject,
)

Split = Literal["heldout", "train"]
SPLITS: tuple[Split, ...] = ("heldout", "train")

FG_DISTANCE = 60.0
CORE_DISTANCE = 80.0
MIN_AREA = 40
MAX_SLOT_DISTANCE = 18.0
MIN_SHAPE_IOU = 0.6
MAX_DETECTIONS = 6

GENERATE_CATEGORIES = ("colour", "shape", "count", "position", "size", "background")
OBJECT_ATTRIBUTES = ("colour", "shape", "position", "size")
PROMPTS_PER_SPLIT = 144
EVAL_SEEDS = (1000, 1001)

_PALETTE = np.asarray(list(COLOURS.values()), dtype=np.float32)  # (6, 3)
_PALETTE_NAMES = list(COLOURS)
_BG_PALETTE = np.asarray(list(BACKGROUNDS.values()), dtype=np.float32)  # (3, 3)
_BG_NAMES = list(BACKGROUNDS)


@dataclass(frozen=True, slots=True)
class Detection:
    """One object found in an image."""

    colour: str
    shape: str
    size: str
    position: str
    area: int
    centroid: tuple[float, float]
    shape_iou: float


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the analyser sees in one image."""

    background: str
    detections: tuple[Detection, ...]


# ------------------------------------------------------------------------------------------ analysis
def _components(mask: NDArray[np.bool_]) -> NDArray[np.int32]:
    """4-connected component labels (−1 outside ``mask``) by min-label propagation."""
    h, w = mask.shape
    big = np.int32(h * w)
    labels = np.where(mask, np.arange(h * w, dtype=np.int32).reshape(h, w), big)  # (H, W) int32
    while True:
        nxt = labels.copy()
        nxt[1:, :] = np.minimum(nxt[1:, :], labels[:-1, :])
        nxt[:-1, :] = np.minimum(nxt[:-1, :], labels[1:, :])
        nxt[:, 1:] = np.minimum(nxt[:, 1:], labels[:, :-1])
        nxt[:, :-1] = np.minimum(nxt[:, :-1], labels[:, 1:])
        nxt = np.where(mask, nxt, big)
        if np.array_equal(nxt, labels):
            break
        labels = nxt
    return np.where(mask, labels, -1).astype(np.int32)


_WINDOW = 64


def _template(shape: str, cx: float, cy: float, area: float) -> tuple[NDArray[np.bool_], int, int]:
    """A centroid-aligned binary template of ``shape`` with ``area`` pixels, in a window at (x0, y0)."""
    r = float(np.sqrt(area / _UNIT_AREA[shape]))
    x0 = round(cx) - _WINDOW // 2
    y0 = round(cy) - _WINDOW // 2
    dx, dy = _CENTROID_OFFSET[shape]
    mask = world.shape_mask(shape, cx - x0 - dx * r, cy - y0 - dy * r, r, _WINDOW, 2) >= 0.5  # type: ignore[arg-type]
    return mask, x0, y0


def _unit_area_and_offset(shape: str) -> tuple[float, tuple[float, float]]:
    r = 100.0
    m = world.shape_mask(shape, 256.0, 256.0, r, 512, 1).astype(np.float64)  # type: ignore[arg-type]
    ys, xs = np.nonzero(m > 0.5)
    return float(m.sum()) / (r * r), (
        (float(xs.mean()) + 0.5 - 256.0) / r,
        (float(ys.mean()) + 0.5 - 256.0) / r,
    )


_UNIT_AREA: dict[str, float] = {}
_CENTROID_OFFSET: dict[str, tuple[float, float]] = {}
for _s in SHAPES:
    _UNIT_AREA[_s], _CENTROID_OFFSET[_s] = _unit_area_and_offset(_s)


def _classify_shape(component: NDArray[np.bool_], cx: float, cy: float) -> tuple[str, float]:
    area = float(component.sum())
    best, best_iou = "unknown", 0.0
    h, w = component.shape
    for shape in SHAPES:
        tmpl, x0, y0 = _template(shape, cx, cy, area)
        # the component inside the template window (zero outside the image)
        win = np.zeros((_WINDOW, _WINDOW), dtype=bool)
        ys0, xs0 = max(0, y0), max(0, x0)
        ys1, xs1 = min(h, y0 + _WINDOW), min(w, x0 + _WINDOW)
        win[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0] = component[ys0:ys1, xs0:xs1]
        outside = area - float(win.sum())
        inter = float((win & tmpl).sum())
        union = float((win | tmpl).sum()) + outside
        iou = inter / union if union > 0 else 0.0
        if iou > best_iou:
            best, best_iou = shape, iou
    if best_iou < MIN_SHAPE_IOU:
        return "unknown", best_iou
    return best, best_iou


def _nearest_slot(cx: float, cy: float) -> str:
    best, dist = "none", MAX_SLOT_DISTANCE
    for name, (sx, sy) in SLOTS.items():
        d = float(np.hypot(cx - sx, cy - sy))
        if d <= dist:
            best, dist = name, d
    return best


def analyse(image: NDArray[np.uint8]) -> Analysis:
    """Find the background and the objects of a 128×128 RGB image.

    Args:
        image: ``(128, 128, 3)`` uint8.

    Returns:
        The background name and up to ``MAX_DETECTIONS`` objects, largest first.
    """
    if image.shape != (world.IMAGE_SIZE, world.IMAGE_SIZE, 3):
        raise ValueError(f"`image` must be (128, 128, 3); given {image.shape}")
    img = image.astype(np.float32)  # (H, W, 3) float32
    border = np.concatenate(
        [
            img[:3].reshape(-1, 3),
            img[-3:].reshape(-1, 3),
            img[:, :3].reshape(-1, 3),
            img[:, -3:].reshape(-1, 3),
        ]
    )  # (N, 3)
    bg_rgb = np.median(border, axis=0)  # (3,)
    background = _BG_NAMES[int(np.argmin(np.linalg.norm(_BG_PALETTE - bg_rgb, axis=1)))]
    fg = np.linalg.norm(img - bg_rgb, axis=2) > FG_DISTANCE  # (H, W) bool
    dist = np.linalg.norm(img[:, :, None, :] - _PALETTE[None, None], axis=3)  # (H, W, 6)
    nearest = np.argmin(dist, axis=2)  # (H, W) int
    core = fg & (np.min(dist, axis=2) <= CORE_DISTANCE)  # (H, W) bool
    detections: list[Detection] = []
    for ci, colour in enumerate(_PALETTE_NAMES):
        mask = core & (nearest == ci)
        if int(mask.sum()) < MIN_AREA:
            continue
        labels = _components(mask)
        ids, counts = np.unique(labels[labels >= 0], return_counts=True)
        for lab, count in zip(ids, counts, strict=True):
            if count < MIN_AREA:
                continue
            comp = labels == lab
            ys, xs = np.nonzero(comp)
            cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
            shape, iou = _classify_shape(comp, cx, cy)
            detections.append(
                Detection(
                    colour=colour,
                    shape=shape,
                    size=_size_of(shape, int(count)),
                    position=_nearest_slot(cx, cy),
                    area=int(count),
                    centroid=(cx, cy),
                    shape_iou=round(iou, 4),
                )
            )
    detections.sort(key=lambda d: -d.area)
    return Analysis(background=background, detections=tuple(detections[:MAX_DETECTIONS]))


@lru_cache(maxsize=1)
def _size_thresholds() -> dict[str, float]:
    """Area threshold between small and large per shape: geometric mean of the ground-truth core areas."""
    out: dict[str, float] = {}
    for shape in SHAPES:
        areas = {}
        for size in world.SIZES:
            scene = Scene((ShapeObject(shape, "red", size, "centre"),), "white")
            areas[size] = _core_area(world.render(scene))
        out[shape] = float(np.sqrt(areas["small"] * areas["large"]))
    out["unknown"] = out["circle"]
    return out


def _core_area(image: NDArray[np.uint8]) -> float:
    img = image.astype(np.float32)
    bg = np.median(img[:3].reshape(-1, 3), axis=0)
    fg = np.linalg.norm(img - bg, axis=2) > FG_DISTANCE
    core = fg & (
        np.min(np.linalg.norm(img[:, :, None, :] - _PALETTE[None, None], axis=3), axis=2) <= CORE_DISTANCE
    )
    return float(core.sum())


def _size_of(shape: str, area: int) -> str:
    return "large" if area >= _size_thresholds()[shape] else "small"


# ------------------------------------------------------------------------------------------- scoring
def _obj_attrs(o: ShapeObject | Detection) -> tuple[str, str, str, str]:
    return (o.colour, o.shape, o.position, o.size)


def _best_assignment(expected: Sequence[ShapeObject], dets: Sequence[Detection]) -> list[Detection | None]:
    """The injective assignment of expected objects to detections matching the most attributes."""
    n = len(expected)
    slots: list[Detection | None] = [*dets, *([None] * n)]
    best: tuple[int, float] = (-1, 0.0)
    best_perm: tuple[int, ...] = tuple(range(len(dets), len(dets) + n))
    for perm in itertools.permutations(range(len(slots)), n):
        matched, dist = 0, 0.0
        for e, j in zip(expected, perm, strict=True):
            d = slots[j]
            if d is None:
                continue
            matched += sum(a == b for a, b in zip(_obj_attrs(e), _obj_attrs(d), strict=True))
            sx, sy = SLOTS[e.position]
            dist += float(np.hypot(d.centroid[0] - sx, d.centroid[1] - sy))
        if matched > best[0] or (matched == best[0] and dist < best[1]):
            best, best_perm = (matched, dist), perm
    return [slots[j] for j in best_perm]


def score_generate(scene: Scene, analysis: Analysis) -> dict[str, float]:
    """Per-category scores (0–1) of one generated image against its prompt's scene."""
    dets = analysis.detections
    assigned = _best_assignment(scene.objects, dets)
    out: dict[str, float] = {}
    for k, attr in enumerate(OBJECT_ATTRIBUTES):
        hits = [
            d is not None and _obj_attrs(d)[k] == _obj_attrs(e)[k]
            for e, d in zip(scene.objects, assigned, strict=True)
        ]
        out[attr] = float(np.mean(hits))
    out["count"] = float(len(dets) == len(scene.objects))
    out["background"] = float(analysis.background == scene.background)
    out = {c: out[c] for c in GENERATE_CATEGORIES}
    out["overall"] = float(np.mean([out[c] for c in GENERATE_CATEGORIES]))
    out["exact"] = float(all(out[c] == 1.0 for c in GENERATE_CATEGORIES))
    return out


def _has(dets: Sequence[Detection], **attrs: str) -> bool:
    return any(all(getattr(d, k) == v for k, v in attrs.items()) for d in dets)


def score_edit(edit: Edit, analysis: Analysis) -> dict[str, float]:
    """Instruction, preservation and sample score (0–1) of one edit output."""
    dets = analysis.detections
    subj = edit.subject
    if edit.kind == "background":
        ok = analysis.background == edit.target.background
    elif edit.kind == "remove":
        assert subj is not None
        ok = not _has(dets, colour=subj.colour)
    else:
        assert subj is not None
        changed = next(o for o in edit.target.objects if o not in edit.source.objects)
        ok = _has(dets, colour=changed.colour, shape=changed.shape, position=changed.position)
        if edit.kind == "add":
            ok = ok and _has(dets, colour=changed.colour, size=changed.size)
        if edit.kind == "colour":
            ok = ok and not _has(dets, colour=subj.colour)
        if edit.kind == "move":
            ok = ok and not _has(dets, colour=subj.colour, position=subj.position)
    untouched = [o for o in edit.target.objects if o in edit.source.objects]
    facts = [_has(dets, colour=o.colour, shape=o.shape, position=o.position, size=o.size) for o in untouched]
    if edit.kind != "background":
        facts.append(analysis.background == edit.source.background)
    facts.append(len(dets) == len(edit.target.objects))
    preserve = float(np.mean(facts))
    return {"instruction": float(ok), "preserve": preserve, "score": float(ok) * preserve}


# --------------------------------------------------------------------------------------- prompt sets
@dataclass(frozen=True, slots=True)
class GenerateItem:
    """One fixed generate prompt."""

    id: str
    scene: Scene
    prompt: str


@dataclass(frozen=True, slots=True)
class EditItem:
    """One fixed edit triple."""

    id: str
    edit: Edit


def _in_split(split: Split, heldout: bool) -> bool:
    return heldout if split == "heldout" else not heldout


@lru_cache(maxsize=4)
def generate_items(split: Split) -> tuple[GenerateItem, ...]:
    """The fixed generate prompts of a split (48 each with 1, 2 and 3 objects)."""
    rng = np.random.default_rng(20260401 if split == "heldout" else 20260402)
    items: list[GenerateItem] = []
    seen: set[str] = set()
    per_count = PROMPTS_PER_SPLIT // 3
    for n in (1, 2, 3):
        k = 0
        while k < per_count:
            scene = world.random_scene(rng, n)
            if scene.key() in seen or not _in_split(split, world.is_heldout_scene(scene)):
                continue
            seen.add(scene.key())
            prompt = scene.caption(world.random_order(rng, n))
            items.append(GenerateItem(id=f"g{n}-{k:02d}", scene=scene, prompt=prompt))
            k += 1
    return tuple(items)


@lru_cache(maxsize=4)
def edit_items(split: Split) -> tuple[EditItem, ...]:
    """The fixed edit triples of a split (24 per kind)."""
    rng = np.random.default_rng(20260411 if split == "heldout" else 20260412)
    items: list[EditItem] = []
    seen: set[str] = set()
    per_kind = PROMPTS_PER_SPLIT // len(EDIT_KINDS)
    for kind in EDIT_KINDS:
        k = 0
        while k < per_kind:
            edit = world.random_edit(rng, kind)
            if edit.key() in seen or not _in_split(split, world.is_heldout_edit(edit)):
                continue
            seen.add(edit.key())
            items.append(EditItem(id=f"e-{kind}-{k:02d}", edit=edit))
            k += 1
    return tuple(items)


# ---------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True, slots=True, eq=False)
class EvalRequest:
    """One image to make: the request, and the scene a perfect model would produce."""

    task: str
    prompt: str
    seed: int
    image: NDArray[np.uint8] | None
    expected: Scene


ImageFn = Callable[[Sequence[EvalRequest]], list[NDArray[np.uint8]]]
"""Makes one image per request, in order."""


@dataclass
class Report:
    """Aggregated ShapesEval scores."""

    meta: dict[str, Any]
    generate: dict[str, float] = field(default_factory=dict)
    edit: dict[str, float] = field(default_factory=dict)
    edit_parts: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def table(self) -> str:
        """A plain-text table of the category scores."""
        lines = [
            f"ShapesEval {self.meta.get('split', '')}  "
            + "  ".join(
                f"{k}={v}"
                for k, v in self.meta.items()
                if k in ("model", "backend", "precision", "target", "dtype", "steps", "guidance")
            )
        ]
        if self.generate:
            lines.append("generate  " + "  ".join(f"{k} {v:.3f}" for k, v in self.generate.items()))
        if self.edit:
            lines.append("edit      " + "  ".join(f"{k} {v:.3f}" for k, v in self.edit.items()))
            for part in ("instruction", "preserve"):
                if part in self.edit_parts:
                    vals = self.edit_parts[part]
                    lines.append(f"  {part:<11} " + "  ".join(f"{k} {v:.3f}" for k, v in vals.items()))
        return "\n".join(lines)


def evaluate(
    make_images: ImageFn,
    *,
    split: Split = "heldout",
    tasks: Sequence[str] = ("generate", "edit"),
    seeds: Sequence[int] = EVAL_SEEDS,
    limit: int | None = None,
    batch_size: int = 16,
    meta: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Run the fixed prompt sets through ``make_images`` and score every output.

    Args:
        make_images: Produces one image per request.
        split: ``heldout`` (prompts never trained on) or ``train``.
        tasks: Which parts to run.
        seeds: Noise seeds; every prompt runs once per seed.
        limit: Use only the first ``limit`` items of each set spread over categories (quick checks).
        batch_size: Requests per ``make_images`` call.
        meta: Extra facts recorded in the report.
        progress: Called with the number of images finished after each batch.

    Returns:
        The report.
    """
    report = Report(meta={"split": split, "seeds": list(seeds), **(meta or {})})
    t0 = time.perf_counter()
    if "generate" in tasks:
        gitems = list(generate_items(split))
        if limit is not None:
            gitems = gitems[:: max(1, len(gitems) // limit)][:limit]
        requests = [(it, seed) for it in gitems for seed in seeds]
        per_cat: dict[str, list[float]] = {c: [] for c in (*GENERATE_CATEGORIES, "exact")}
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            images = make_images(
                [EvalRequest("generate", it.prompt, seed, None, it.scene) for it, seed in chunk]
            )
            for (it, seed), image in zip(chunk, images, strict=True):
                scores = score_generate(it.scene, analyse(image))
                for c in per_cat:
                    per_cat[c].append(scores[c])
                report.samples.append({"id": it.id, "seed": seed, "prompt": it.prompt, **scores})
            if progress is not None:
                progress(len(chunk))
        report.generate = {c: float(np.mean(v)) for c, v in per_cat.items() if c != "exact"}
        report.generate["overall"] = float(np.mean([report.generate[c] for c in GENERATE_CATEGORIES]))
        report.generate["exact"] = float(np.mean(per_cat["exact"]))
    if "edit" in tasks:
        eitems = list(edit_items(split))
        if limit is not None:
            eitems = eitems[:: max(1, len(eitems) // limit)][:limit]
        erequests = [(it, seed) for it in eitems for seed in seeds]
        parts: dict[str, dict[str, list[float]]] = {
            p: {k: [] for k in EDIT_KINDS} for p in ("score", "instruction", "preserve")
        }
        for start in range(0, len(erequests), batch_size):
            echunk = erequests[start : start + batch_size]
            images = make_images(
                [
                    EvalRequest(
                        "edit", it.edit.instruction, seed, world.render(it.edit.source), it.edit.target
                    )
                    for it, seed in echunk
                ]
            )
            for (eit, seed), image in zip(echunk, images, strict=True):
                scores = score_edit(eit.edit, analyse(image))
                for p in parts:
                    parts[p][eit.edit.kind].append(scores[p])
                report.samples.append(
                    {
                        "id": eit.id,
                        "seed": seed,
                        "kind": eit.edit.kind,
                        "prompt": eit.edit.instruction,
                        **scores,
                    }
                )
            if progress is not None:
                progress(len(echunk))
        report.edit = {k: float(np.mean(v)) for k, v in parts["score"].items() if v}
        report.edit["overall"] = float(np.mean([report.edit[k] for k in EDIT_KINDS if k in report.edit]))
        report.edit_parts = {
            p: {k: float(np.mean(v)) for k, v in parts[p].items() if v} for p in ("instruction", "preserve")
        }
    report.meta["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def pipeline_image_fn(pipeline: Any, steps: int | None) -> ImageFn:
    """An :data:`ImageFn` over the public runtime pipeline (what the server serves)."""
    from model_runtime.types import SampleSpec

    def make(requests: Sequence[EvalRequest]) -> list[NDArray[np.uint8]]:
        out: list[NDArray[np.uint8] | None] = [None] * len(requests)
        for task in ("generate", "edit"):
            rows = [i for i, r in enumerate(requests) if r.task == task]
            if not rows:
                continue
            specs = [
                SampleSpec(
                    task=task,
                    prompt=requests[i].prompt,
                    seed=requests[i].seed,
                    steps=steps,
                    image=requests[i].image,
                )
                for i in rows
            ]
            for i, result in zip(rows, pipeline.run(specs), strict=True):
                out[i] = result.image
        return [img for img in out if img is not None]

    return make


def ground_truth_image_fn(
    transform: Callable[[NDArray[np.uint8]], NDArray[np.uint8]] | None = None,
) -> ImageFn:
    """An :data:`ImageFn` that renders the expected answer (optionally transformed): the scorer's ceiling."""

    def make(requests: Sequence[EvalRequest]) -> list[NDArray[np.uint8]]:
        images = [world.render(r.expected) for r in requests]
        return images if transform is None else [transform(img) for img in images]

    return make


def edits_as_captions(make_images: ImageFn) -> ImageFn:
    """Wrap ``make_images`` so each edit is made as a *generate* request of its target scene's caption.

    The score is what an edit model would reach that reads the source and the instruction perfectly (its
    text features say the edited scene exactly) but copies nothing from the source: the ceiling of the
    text path alone. Generate requests pass through unchanged.
    """

    def make(requests: Sequence[EvalRequest]) -> list[NDArray[np.uint8]]:
        recast = [
            EvalRequest("generate", r.expected.caption(), r.seed, None, r.expected) if r.task == "edit" else r
            for r in requests
        ]
        return make_images(recast)

    return make


def write_report(report: Report, path: Path) -> None:
    """Write a report as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
