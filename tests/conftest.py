"""Shared test fixtures: the conformance fixture model and a session-wide tiny torch pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFORMANCE = FIXTURES / "conformance"
TINY_MODEL = CONFORMANCE / "tiny-dreamlite-mobile"
CASES = CONFORMANCE / "cases"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random DreamLite-mobile in the official folder layout (read-only: copy before editing)."""
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_pipeline():  # type: ignore[no-untyped-def]
    """One float32 torch pipeline on the tiny model, shared by the whole session."""
    from model_runtime import load_pipeline

    return load_pipeline(TINY_MODEL, backend="torch", dtype="float32")


@pytest.fixture(scope="session")
def built_bundle(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    """(bundle folder, export summary) of the tiny conformance model, built once and cached by content.

    Read-only: copy before editing.
    """
    from tests.unit.model_runtime.export.tiny_bundle import tiny_bundle

    return tiny_bundle(Path(request.config.cache.mkdir("dreamlite-bundle")))
