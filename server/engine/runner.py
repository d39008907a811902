"""Stage ② execution: the one runtime thread that owns the model.

The model is loaded, warmed up and run only on this thread (``ThreadPoolExecutor(max_workers=1)``), so the
pipeline is never entered concurrently (peers.md §3 complaint 4). Callers ``await runner.run(...)``; the
pipeline's per-step callback runs on the runtime thread and must hand its events back to the event loop
with ``loop.call_soon_threadsafe``. The prompt-feature cache is wrapped to count hits and misses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from model_runtime import FeatureCache, LRUFeatureCache, Pipeline, SampleResult, SampleSpec, load_pipeline
from model_runtime.recipe import build_recipe
from model_runtime.types import CancelFlag, StepCallback
from server.engine.interfaces import Runtime
from server.settings import ModelSettings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class CountingFeatureCache:
    """A :class:`~model_runtime.cache.FeatureCache` that reports each lookup as a hit or a miss.

    Args:
        inner: The real cache.
        on_lookup: Called with ``True`` for a hit, ``False`` for a miss (from the runtime thread).
    """

    def __init__(self, inner: FeatureCache, on_lookup: Callable[[bool], None]) -> None:
        self.inner = inner
        self.on_lookup = on_lookup

    def get(self, key: str) -> NDArray[np.float32] | None:
        """Look up and report."""
        value = self.inner.get(key)
        self.on_lookup(value is not None)
        return value

    def put(self, key: str, value: NDArray[np.float32]) -> None:
        """Store."""
        self.inner.put(key, value)


class PipelineRuntime:
    """:class:`~server.engine.interfaces.Runtime` over a ``model_runtime`` pipeline.

    Args:
        pipeline: A loaded pipeline.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.backend_name = pipeline.backend.info.name
        self.dtype: str = pipeline.dtype
        self._describe: dict[str, Any] | None = None

    def batch_key(self, spec: SampleSpec) -> tuple[int, int, int, str]:
        """Validate ``spec`` and return (working width, working height, steps, guidance)."""
        key = self.pipeline.batch_key(spec)
        return key.width, key.height, key.steps, key.guidance

    def run(
        self,
        specs: Sequence[SampleSpec],
        on_step: StepCallback | None,
        cancel_flags: Sequence[CancelFlag | None],
    ) -> list[SampleResult]:
        """One batch through the pipeline."""
        return self.pipeline.run(specs, on_step=on_step, cancel_flags=cancel_flags)

    def recipe(self, result: SampleResult, **extra: Any) -> dict[str, Any]:
        """The recipe from ``model_runtime.recipe.build_recipe``."""
        return build_recipe(result, self.pipeline, **extra)

    def describe(self) -> dict[str, Any]:
        """Model facts plus the weights hash."""
        if self._describe is None:
            facts = self.pipeline.describe()
            facts["weights_sha256"] = self.pipeline.backend.artifact_sha256()
            self._describe = facts
        return dict(self._describe)


def load_runtime(settings: ModelSettings, feature_cache: FeatureCache) -> Runtime:
    """Load the model the settings name (runs on the runtime thread).

    Args:
        settings: The ``model`` settings group.
        feature_cache: The prompt-feature cache to give the pipeline.

    Returns:
        The runtime.

    Raises:
        ModelLoadError, BackendUnavailableError: The model cannot be loaded here.
    """
    options: dict[str, Any] = {}
    if settings.backend == "torch":
        from model_runtime.assets import default_model_dir

        source: Path = settings.dir if settings.dir is not None else default_model_dir()
        options.update(device=settings.device, dtype=settings.dtype)
    else:
        assert settings.bundle is not None  # enforced by ServerSettings
        source = settings.bundle
        if settings.target:
            options["target"] = settings.target
        if settings.precision:
            options["precision"] = settings.precision
    pipeline = load_pipeline(source, backend=settings.backend, feature_cache=feature_cache, **options)
    return PipelineRuntime(pipeline)


RuntimeLoader = Callable[[FeatureCache], Runtime]


class Runner:
    """Owns the runtime thread and the runtime on it.

    Args:
        loader: Builds the runtime (called on the runtime thread) from the feature cache.
        cache_entries: Prompt-feature cache size.
        on_cache_lookup: Hit/miss hook for metrics.
        warmup_size: (W, H) of the warm-up generate, or None for the model's default; ``False`` skips it.
    """

    def __init__(
        self,
        loader: RuntimeLoader,
        *,
        cache_entries: int = 1024,
        on_cache_lookup: Callable[[bool], None] = lambda hit: None,
        warmup_size: tuple[int, int] | bool | None = None,
    ) -> None:
        self._loader = loader
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dreamlite-runtime")
        self.cache = CountingFeatureCache(LRUFeatureCache(cache_entries), on_cache_lookup)
        self._warmup_size = warmup_size
        self.runtime: Runtime | None = None
        self.ready = False
        self.load_error: BaseException | None = None
        self.load_seconds = 0.0

    async def _call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    async def start(self) -> None:
        """Load the model and run the warm-up forward pass on the runtime thread.

        Raises:
            Exception: Whatever the loader raised (also kept in ``load_error``).
        """
        t0 = time.perf_counter()
        try:
            self.runtime = await self._call(partial(self._loader, self.cache))
            if self._warmup_size is not False:
                await self._call(self._warmup)
        except BaseException as err:
            self.load_error = err
            raise
        self.load_seconds = time.perf_counter() - t0
        self.ready = True
        logger.info("model ready load_s=%.1f", self.load_seconds)

    def _warmup(self) -> None:
        assert self.runtime is not None
        size = self._warmup_size if isinstance(self._warmup_size, tuple) else None
        spec = SampleSpec(
            task="generate",
            prompt="warm-up",
            seed=0,
            width=None if size is None else size[0],
            height=None if size is None else size[1],
        )
        t0 = time.perf_counter()
        self.runtime.run([spec], None, [None])
        logger.info("warm-up forward done size=%s dur_s=%.2f", size or "default", time.perf_counter() - t0)

    async def run(
        self,
        specs: Sequence[SampleSpec],
        on_step: StepCallback | None,
        cancel_flags: Sequence[CancelFlag | None],
    ) -> list[SampleResult]:
        """Run one batch on the runtime thread.

        Raises:
            CanceledError: Every sample was canceled.
            ModelRuntimeError: The runtime failed.
        """
        runtime = self.runtime
        assert runtime is not None, "runner not started"
        return await self._call(partial(runtime.run, specs, on_step, cancel_flags))

    def close(self) -> None:
        """Stop accepting work (a running batch finishes on its thread)."""
        self.ready = False
        self._executor.shutdown(wait=False, cancel_futures=True)
