"""The procedural shapes world: scenes, renders, captions and edit triples, deterministic from a seed.

A scene is 1–3 objects on a plain background. Each object has a shape (circle, square, triangle, star), a
colour from a fixed palette of six named colours, a size (small, large) and one of five positions (left,
right, top, bottom, centre); the objects of a scene have distinct colours and distinct positions, so
"the red circle" always names exactly one object. Renders are 128×128 RGB, anti-aliased (4×4
supersampling), with no jitter: a scene maps to exactly one image, and an edit changes exactly one fact.

Edit triples (source scene, instruction, target scene) come in six kinds: ``colour``, ``shape``, ``add``,
``remove``, ``move`` and ``background``. Everything else in the target equals the source.

The held-out split is a fixed hash of the canonical description: a generate prompt is held out when its
scene is, an edit when its (source, instruction) pair is. Training samplers never return held-out items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

IMAGE_SIZE = 128
SUPERSAMPLE = 4

Shape = Literal["circle", "square", "triangle", "star"]
Size = Literal["small", "large"]
Position = Literal["left", "right", "top", "bottom", "centre"]
EditKind = Literal["colour", "shape", "add", "remove", "move", "background"]

SHAPES: tuple[Shape, ...] = get_args(Shape)
SIZES: tuple[Size, ...] = get_args(Size)
POSITIONS: tuple[Position, ...] = get_args(Position)
EDIT_KINDS: tuple[EditKind, ...] = get_args(EditKind)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 120, 0),
    "yellow": (245, 220, 20),
    "green": (30, 160, 60),
    "blue": (35, 75, 220),
    "purple": (130, 30, 170),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "gray": (160, 160, 160),
    "black": (25, 25, 25),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)

SLOT_OFFSET = 40  # pixels from the image centre to the left/right/top/bottom slots
SLOTS: dict[Position, tuple[float, float]] = {
    "left": (64.0 - SLOT_OFFSET, 64.0),
    "right": (64.0 + SLOT_OFFSET, 64.0),
    "top": (64.0, 64.0 - SLOT_OFFSET),
    "bottom": (64.0, 64.0 + SLOT_OFFSET),
    "centre": (64.0, 64.0),
}
RADII: dict[Size, float] = {"small": 10.0, "large": 15.0}

POSITION_PHRASES: dict[Position, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
MOVE_PHRASES: dict[Position, str] = {
    "left": "to the left",
    "right": "to the right",
    "top": "to the top",
    "bottom": "to the bottom",
    "centre": "to the centre",
}
HELDOUT_MODULUS = 8  # one item in eight is held out


@dataclass(frozen=True, slots=True)
class ShapeObject:
    """One object of a scene."""

    shape: Shape
    colour: str
    size: Size
    position: Position

    def phrase(self) -> str:
        """``a large red circle on the left``."""
        return f"a {self.size} {self.colour} {self.shape} {POSITION_PHRASES[self.position]}"

    def name(self) -> str:
        """``the red circle`` (unique in a scene: colours are distinct)."""
        return f"the {self.colour} {self.shape}"


@dataclass(frozen=True, slots=True)
class Scene:
    """1–3 objects with distinct colours and positions on a plain background."""

    objects: tuple[ShapeObject, ...]
    background: str

    def key(self) -> str:
        """Canonical description, independent of object order."""
        parts = sorted(f"{o.position}:{o.size}:{o.colour}:{o.shape}" for o in self.objects)
        return f"{self.background}|" + ",".join(parts)

    def caption(self, order: Sequence[int] | None = None) -> str:
        """The prompt describing the scene; ``order`` permutes the objects (default: slot order)."""
        objs = list(self.objects) if order is None else [self.objects[i] for i in order]
        phrases = [o.phrase() for o in objs]
        if len(phrases) == 1:
            body = phrases[0]
        else:
            body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{body} on a {self.background} background"


@dataclass(frozen=True, slots=True)
class Edit:
    """An edit triple: source scene, instruction, target scene.

    Attributes:
        kind: Which fact changes.
        source: The scene before.
        target: The scene after.
        instruction: The user's words (the pipeline adds the edit template around them).
        subject: The edited object as it is in the source (for ``add``: the new object); None for
            ``background``.
    """

    kind: EditKind
    source: Scene
    target: Scene
    instruction: str
    subject: ShapeObject | None

    def key(self) -> str:
        """Canonical description of the (source, instruction) pair."""
        return f"{self.source.key()}||{self.instruction}"


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def is_heldout_scene(scene: Scene) -> bool:
    """True when the scene (and so its generate prompt) belongs to the held-out split."""
    return _stable_hash("scene:" + scene.key()) % HELDOUT_MODULUS == 0


def is_heldout_edit(edit: Edit) -> bool:
    """True when the edit's (source, instruction) pair belongs to the held-out split."""
    return _stable_hash("edit:" + edit.key()) % HELDOUT_MODULUS == 0


# --------------------------------------------------------------------------------------------- geometry
def _polygon_vertices(shape: Shape, cx: float, cy: float, r: float) -> NDArray[np.float64] | None:
    """Vertices (K, 2) of the polygonal shapes, None for the circle. All shapes point up."""
    if shape == "square":
        a = 0.86 * r
        return np.array([[cx - a, cy - a], [cx + a, cy - a], [cx + a, cy + a], [cx - a, cy + a]])
    if shape == "triangle":
        big = 1.25 * r  # circumradius; the bounding box is centred on (cx, cy)
        top_y = cy - 0.75 * big
        base_y = cy + 0.75 * big
        half = big * np.sqrt(3.0) / 2.0
        return np.array([[cx, top_y], [cx + half, base_y], [cx - half, base_y]])
    if shape == "star":
        outer, inner = 1.25 * r, 0.5 * 1.25 * r
        cy_star = cy + 0.09 * outer  # centre the bounding box vertically
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, outer, inner)
        return np.stack([cx + radii * np.cos(angles), cy_star + radii * np.sin(angles)], axis=1)
    return None


def shape_mask(
    shape: Shape, cx: float, cy: float, r: float, size: int = IMAGE_SIZE, ss: int = 1
) -> NDArray[np.float32]:
    """Coverage (0–1) of a shape on a ``size``×``size`` pixel grid, sampled ``ss``×``ss`` per pixel.

    Args:
        shape: Which shape.
        cx: Centre x in pixels (pixel centres at i + 0.5).
        cy: Centre y in pixels.
        r: Nominal radius (the circle's radius; other shapes are scaled to similar area).
        size: Grid side in pixels.
        ss: Supersampling factor per axis.

    Returns:
        ``(size, size)`` float32 coverage.
    """
    coords = (np.arange(size * ss, dtype=np.float64) + 0.5) / ss  # (size·ss,) sample positions
    xs, ys = np.meshgrid(coords, coords)  # (S, S) float64
    verts = _polygon_vertices(shape, cx, cy, r)
    if verts is None:
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    else:
        inside = np.zeros(xs.shape, dtype=bool)
        k = len(verts)
        for i in range(k):  # even-odd rule, vectorised over samples
            x1, y1 = verts[i]
            x2, y2 = verts[(i + 1) % k]
            crosses = (y1 > ys) != (y2 > ys)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_at = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (xs < x_at)
    cover = inside.reshape(size, ss, size, ss).mean(axis=(1, 3))  # (size, size) float64
    return np.asarray(cover, dtype=np.float32)


@lru_cache(maxsize=64)
def _object_alpha(shape: Shape, size: Size, position: Position) -> NDArray[np.float32]:
    cx, cy = SLOTS[position]
    alpha = shape_mask(shape, cx, cy, RADII[size], IMAGE_SIZE, SUPERSAMPLE)  # (128, 128) float32
    alpha.setflags(write=False)
    return alpha


def render(scene: Scene) -> NDArray[np.uint8]:
    """Render a scene.

    Returns:
        ``(128, 128, 3)`` uint8 RGB.
    """
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)  # (H, W, 3) float32
    img[:] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    for obj in scene.objects:
        alpha = _object_alpha(obj.shape, obj.size, obj.position)[..., None]  # (H, W, 1)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        img = img * (1.0 - alpha) + colour * alpha
    return np.clip(np.round(img), 0, 255).astype(np.uint8)  # (H, W, 3) uint8


# ------------------------------------------------------------------------------------------- sampling
def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def random_object(
    rng: np.random.Generator, used_colours: Sequence[str], used_positions: Sequence[str]
) -> ShapeObject:
    """An object whose colour and position differ from those already used."""
    colours = [c for c in COLOUR_NAMES if c not in used_colours]
    positions = [p for p in POSITIONS if p not in used_positions]
    return ShapeObject(
        shape=_pick(rng, SHAPES),  # type: ignore[arg-type]
        colour=_pick(rng, colours),
        size=_pick(rng, SIZES),  # type: ignore[arg-type]
        position=_pick(rng, positions),  # type: ignore[arg-type]
    )


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A uniformly random scene with ``n_objects`` (default: 1–3 uniformly) objects."""
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    objs: list[ShapeObject] = []
    for _ in range(n):
        objs.append(random_object(rng, [o.colour for o in objs], [o.position for o in objs]))
    objs.sort(key=lambda o: POSITIONS.index(o.position))
    return Scene(objects=tuple(objs), background=_pick(rng, BACKGROUND_NAMES))


def random_order(rng: np.random.Generator, n: int) -> list[int]:
    """A random permutation of range(n) (caption object order)."""
    return [int(i) for i in rng.permutation(n)]


def _with_objects(scene: Scene, objs: Sequence[ShapeObject]) -> Scene:
    ordered = sorted(objs, key=lambda o: POSITIONS.index(o.position))
    return replace(scene, objects=tuple(ordered))


def random_edit(rng: np.random.Generator, kind: EditKind | None = None) -> Edit:
    """A random edit triple of ``kind`` (default: uniform over the six kinds)."""
    kind = _pick(rng, EDIT_KINDS) if kind is None else kind  # type: ignore[assignment]
    if kind == "add":
        source = random_scene(rng, int(rng.integers(1, 3)))
    elif kind == "remove":
        source = random_scene(rng, int(rng.integers(2, 4)))
    else:
        source = random_scene(rng)
    objs = list(source.objects)
    used_c = [o.colour for o in objs]
    used_p = [o.position for o in objs]
    if kind == "background":
        bg = _pick(rng, [b for b in BACKGROUND_NAMES if b != source.background])
        return Edit(kind, source, replace(source, background=bg), f"change the background to {bg}", None)
    if kind == "add":
        new = random_object(rng, used_c, used_p)
        instr = f"add {new.phrase()}"
        return Edit(kind, source, _with_objects(source, [*objs, new]), instr, new)
    idx = int(rng.integers(len(objs)))
    subj = objs[idx]
    rest = objs[:idx] + objs[idx + 1 :]
    if kind == "remove":
        return Edit(kind, source, _with_objects(source, rest), f"remove {subj.name()}", subj)
    if kind == "colour":
        colour = _pick(rng, [c for c in COLOUR_NAMES if c not in used_c])
        changed = replace(subj, colour=colour)
        instr = f"make {subj.name()} {colour}"
    elif kind == "shape":
        shape: Shape = _pick(rng, [s for s in SHAPES if s != subj.shape])  # type: ignore[assignment]
        changed = replace(subj, shape=shape)
        instr = f"turn {subj.name()} into a {shape}"
    else:  # move
        pos: Position = _pick(rng, [p for p in POSITIONS if p not in used_p])  # type: ignore[assignment]
        changed = replace(subj, position=pos)
        instr = f"move {subj.name()} {MOVE_PHRASES[pos]}"
    return Edit(kind, source, _with_objects(source, [*rest, changed]), instr, subj)  # type: ignore[arg-type]


def train_scene(rng: np.random.Generator) -> Scene:
    """A random scene from the training split."""
    while True:
        scene = random_scene(rng)
        if not is_heldout_scene(scene):
            return scene


def train_edit(rng: np.random.Generator) -> Edit:
    """A random edit from the training split."""
    while True:
        edit = random_edit(rng)
        if not is_heldout_edit(edit):
            return edit


def world_words() -> list[str]:
    """Every word the world's captions and instructions use (for building the tokenizer)."""
    words = {"a", "the", "and", "on", "at", "in", "to", "of", "background", "add", "remove", "make"}
    words |= {"turn", "into", "move", "change"}
    words |= set(SHAPES) | set(SIZES) | set(COLOUR_NAMES) | set(BACKGROUND_NAMES)
    for phrase in (*POSITION_PHRASES.values(), *MOVE_PHRASES.values()):
        words |= set(phrase.split())
    return sorted(words)
