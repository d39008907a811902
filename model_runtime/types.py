"""Value types shared by every stage of the runtime: what to make, what came out, progress events.

A :class:`SampleSpec` is one image to make (a server job with ``n`` images becomes ``n`` specs, seed + i).
The pipeline resolves it against the model's constants into a plan, runs a batch of plans through one
denoiser call per step, and returns one :class:`SampleResult` per spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import numpy as np
from numpy.typing import NDArray

from model_runtime.dtypes import DType
from model_runtime.prompts import Task

NoiseSource = Literal["torch-cpu", "dln1"]
NOISE_SOURCES: tuple[NoiseSource, ...] = get_args(NoiseSource)
TASKS: tuple[Task, ...] = get_args(Task)
GuidanceMode = Literal["none", "cfg"]
SEED_MAX = 2**64 - 1
SampleStatus = Literal["succeeded", "canceled"]

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
RGB8 = NDArray[np.uint8]


@dataclass(frozen=True, slots=True, eq=False)
class SampleSpec:
    """One image to make.

    Attributes:
        task: ``generate`` or ``edit``.
        prompt: The user's words (the template and task prefix are added by the pipeline).
        seed: Initial-noise seed, 0 … 2**64 − 1.
        width: Output width. Generate: the working width (default: the model's default size). Edit: the
            final width after resizing back (default: the source width, as the official ``infer_mobile.py``).
        height: Output height, as ``width``.
        steps: Denoising steps (default: the model's, 4 for DreamLite-mobile).
        noise: ``torch-cpu`` (bit-identical to the official seeds) or ``dln1`` (portable, see docs).
        image: Edit source, ``(H, W, 3)`` uint8 RGB.
        working_size: Edit only: the (W, H) the model computes at. Default: the model's edit working size
            (official mobile: 1024², then resized back to the output size).
        guidance_scale: Text guidance (base variant only).
        image_guidance_scale: Image guidance for edits (base variant only).
    """

    task: Task
    prompt: str
    seed: int
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    noise: NoiseSource = "torch-cpu"
    image: RGB8 | None = None
    working_size: tuple[int, int] | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None


@dataclass(frozen=True, slots=True)
class BatchKey:
    """What samples must share to ride in one denoiser batch (the task is deliberately not in it)."""

    width: int
    height: int
    steps: int
    guidance: GuidanceMode


@dataclass(frozen=True, slots=True)
class StepEvent:
    """Emitted after each denoising step.

    Attributes:
        step: 1-based index of the step just finished.
        total: Number of steps.
        indices: Positions (in the run's spec list) of the samples still active.
        latents: ``(len(indices), 4, h, w)`` float32 latents after the step.
    """

    step: int
    total: int
    indices: tuple[int, ...]
    latents: F32


class StepCallback(Protocol):
    """Per-step hook: called on the runtime thread after every step."""

    def __call__(self, event: StepEvent) -> None:
        """Receive one step event."""
        ...


class CancelFlag(Protocol):
    """Anything with ``is_set()``; ``threading.Event`` qualifies. Checked between steps and before decode."""

    def is_set(self) -> bool:
        """True once the sample should stop."""
        ...


@dataclass(slots=True)
class Trace:
    """Intermediates of one sample, named as in the conformance README (``step{i}_latents`` …).

    ``arrays`` keeps insertion order, which is stage order. ``meta`` holds JSON-able facts (sizes, dtype,
    backend, drop_idx) that explain the arrays.
    """

    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: NDArray[Any]) -> None:
        """Record one array (a private copy)."""
        self.arrays[name] = np.array(value, copy=True)

    def save_npz(self, path: str) -> None:
        """Write the arrays (and ``meta`` as a JSON string under ``__meta__``) to an ``.npz`` file."""
        import json

        payload: dict[str, Any] = dict(self.arrays)
        payload["__meta__"] = np.asarray(json.dumps(self.meta, sort_keys=True))
        np.savez_compressed(path, **payload)


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything that determines a sample's bits, returned with every image."""

    task: Task
    seed: int
    noise: NoiseSource
    steps: int
    sigmas: tuple[float, ...]
    timesteps: tuple[float, ...]
    width: int
    height: int
    working_width: int
    working_height: int
    dtype: DType
    guidance_scale: float | None
    image_guidance_scale: float | None
    batch_size: int


@dataclass(slots=True)
class SampleResult:
    """The outcome of one spec.

    Attributes:
        index: Position of the spec in the run.
        status: ``succeeded`` or ``canceled``.
        image: ``(H, W, 3)`` uint8 for succeeded samples.
        recipe: The resolved recipe.
        trace: Intermediates, when the run was asked for them.
        timings: Seconds per stage of the sample's batch (``text_encode``, ``denoise``, ``decode`` …).
    """

    index: int
    status: SampleStatus
    image: RGB8 | None
    recipe: Recipe
    trace: Trace | None = None
    timings: dict[str, float] = field(default_factory=dict)
