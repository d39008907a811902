"""The tiny end-to-end recipe run shared by the training tests (every stage, quick sizes)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model_runtime.train.recipe import STAGES, Recipe, RecipeConfig


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recipe, Path, dict[str, float]]:
    """The quick recipe run to its end: the recipe, its output folder and the wall seconds per stage."""
    torch.set_num_threads(2)
    run_dir = tmp_path_factory.mktemp("run")
    out = run_dir / "model"
    recipe = Recipe(run_dir, RecipeConfig.quick(), progress=False)
    timings = recipe.run(STAGES, out=out)
    return recipe, out, timings


@pytest.fixture
def branch_run(quick_run: tuple[Recipe, Path, dict[str, float]], tmp_path: Path) -> Callable[..., Path]:
    """``branch(*stages)``: a copy of the quick run's folder (``tmp_path/run``) without those stages' folders.

    The run's output folder is left out too; the copy is a run to resume, as ``docs/nano.md`` branches one.
    """

    def branch(*without: str) -> Path:
        run = tmp_path / "run"
        shutil.copytree(quick_run[0].run_dir, run, ignore=shutil.ignore_patterns(*without, "model"))
        return run

    return branch
