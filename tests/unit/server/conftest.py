"""Fixtures for server unit tests: the anyio backend and a fake runtime with a fixed step time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from model_runtime.errors import CanceledError, InvalidInputError
from model_runtime.recipe import rgb8_sha256
from model_runtime.types import CancelFlag, Recipe, SampleResult, SampleSpec, StepEvent
from server.engine.job import BatchKey, Job, JobRequest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeRuntime:
    """A runtime with a fixed step time: images are filled with (seed % 251); records every batch."""

    backend_name = "fake"
    dtype = "float32"

    def __init__(self, step_s: float = 0.002, fail: bool = False, max_ok_batch: int | None = None) -> None:
        self.step_s = step_s
        self.fail = fail
        self.max_ok_batch = max_ok_batch  # larger batches raise (an out-of-memory stand-in)
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def batch_key(self, spec: SampleSpec) -> tuple[int, int, int, str]:
        if spec.width is not None and spec.width % 32:
            raise InvalidInputError("width", "must be a multiple of 32.", given=spec.width)
        return (spec.width or 64, spec.height or 64, spec.steps or 4, "none")

    def run(
        self,
        specs: Sequence[SampleSpec],
        on_step: Callable[[StepEvent], None] | None,
        cancel_flags: Sequence[CancelFlag | None],
    ) -> list[SampleResult]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([s.seed for s in specs])
        if self.fail or (self.max_ok_batch is not None and len(specs) > self.max_ok_batch):
            raise RuntimeError("device on fire")
        steps = specs[0].steps or 4
        flags = list(cancel_flags)
        active = [i for i, f in enumerate(flags) if not (f is not None and f.is_set())]
        for step in range(steps):
            if not active:
                break
            time.sleep(self.step_s)
            if on_step is not None:
                on_step(
                    StepEvent(step + 1, steps, tuple(active), np.zeros((len(active), 4, 2, 2), np.float32))
                )
            active = [i for i in active if not (flags[i] is not None and flags[i].is_set())]  # type: ignore[union-attr]
        if not active:
            raise CanceledError("all canceled")
        results = []
        for i, spec in enumerate(specs):
            width, height = spec.width or 64, spec.height or 64
            recipe = Recipe(
                spec.task,
                spec.seed,
                spec.noise,
                steps,
                (1.0, 0.0),
                (1000.0,),
                width,
                height,
                width,
                height,
                "float32",
                None,
                None,
                len(specs),
            )
            image = np.full((height, width, 3), spec.seed % 251, np.uint8) if i in active else None
            results.append(
                SampleResult(
                    i,
                    "succeeded" if image is not None else "canceled",
                    image,
                    recipe,
                    timings={"text_encode": 0.001, "denoise": 0.002, "decode": 0.001},
                )
            )
        return results

    def recipe(self, result: SampleResult, **extra: Any) -> dict[str, Any]:
        assert result.image is not None
        return {
            "seed": result.recipe.seed,
            "batch_size": result.recipe.batch_size,
            "rgb8_sha256": rgb8_sha256(result.image),
            **extra,
        }

    def describe(self) -> dict[str, Any]:
        return {"model_id": "fake-model", "backend": "fake", "dtype": "float32"}


def make_job(
    job_id: str, key: BatchKey | None = None, n: int = 1, created: float = 0.0, **request: Any
) -> Job:
    req = JobRequest(
        task=request.pop("task", "generate"),
        prompt=request.pop("prompt", "p"),
        seed=request.pop("seed", 1),
        n=n,
        **request,
    )
    return Job(
        id=job_id,
        request=req,
        owner="o",
        mode="async",
        key=key or BatchKey("fake", "float32", 64, 64, 4, "none"),
        pending=list(range(n)),
        created_mono=created,
    )
