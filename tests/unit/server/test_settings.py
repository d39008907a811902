"""Settings: DREAMLITE_ prefix, nested groups with __, cross-field rules; env.example is current."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import ServerSettings, render_env_example

ROOT = Path(__file__).resolve().parents[3]


def test_env_prefix_and_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMLITE_PORT", "9123")
    monkeypatch.setenv("DREAMLITE_BATCHING__MAX_WAIT_MS", "7.5")
    monkeypatch.setenv("DREAMLITE_BATCHING__ENABLED", "false")
    monkeypatch.setenv("DREAMLITE_AUTH__API_KEYS", '["k1","k2"]')
    monkeypatch.setenv("DREAMLITE_MODEL__DIR", "")  # empty values fall back to the default
    settings = ServerSettings()
    assert settings.port == 9123
    assert settings.batching.max_wait_ms == 7.5
    assert settings.effective_max_batch_size == 1
    assert [k.get_secret_value() for k in settings.auth.api_keys] == ["k1", "k2"]
    assert settings.model.dir is None
    assert "k1" not in repr(settings)  # keys are secrets


def test_cross_field_rules() -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        ServerSettings(scaleout={"broker": "redis"})
    with pytest.raises(ValidationError, match="bundle"):
        ServerSettings(model={"backend": "onnx"})
    with pytest.raises(ValidationError):
        ServerSettings(batching={"max_batch_size": 0})
    with pytest.raises(ValidationError):
        ServerSettings(unknown_knob=1)


def test_env_example_is_generated_from_the_settings() -> None:
    current = (ROOT / "deploy" / "env.example").read_text()
    assert current == render_env_example(), "regenerate: python -m server.settings > deploy/env.example"
    for name in (
        "DREAMLITE_BATCHING__MAX_BATCH_SIZE",
        "DREAMLITE_QUEUE__MAX_QUEUED_JOBS",
        "DREAMLITE_LIMITS__MAX_UPLOAD_BYTES",
        "DREAMLITE_AUTH__API_KEYS",
        "DREAMLITE_MODEL__DIR",
    ):
        assert f"\n{name}=" in current
