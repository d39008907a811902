"""The tiny end-to-end recipe run shared by the training tests (every stage, quick sizes)."""

from __future__ import annotations

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
