"""Fixtures of the backend tests: the shared tiny bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.model_runtime.export.tiny_bundle import tiny_bundle


@pytest.fixture(scope="session")
def built_bundle(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    """(bundle folder, export summary) of the tiny conformance model (read-only: copy before editing)."""
    return tiny_bundle(Path(request.config.cache.mkdir("dreamlite-bundle")))
