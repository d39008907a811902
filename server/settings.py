"""Stage ⓪ configuration: every server knob, read once from ``DREAMLITE_*`` environment variables.

This is the only module that reads the environment. Nested groups use ``__`` as the delimiter, e.g.
``DREAMLITE_BATCHING__MAX_WAIT_MS=10``. Lists and maps are given as JSON
(``DREAMLITE_AUTH__API_KEYS='["key-1","key-2"]'``). ``deploy/env.example`` is generated from this model with
``python -m server.settings > deploy/env.example`` and a test keeps it current.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "DREAMLITE_"


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Group):
    """Which model the runtime thread loads and how."""

    dir: Path | None = Field(
        default=None,
        description="DreamLite model folder (official layout). Empty: the embedded default model.",
    )
    backend: Literal["torch", "onnx", "qnn"] = Field(default="torch", description="Runtime backend.")
    bundle: Path | None = Field(default=None, description="Device bundle folder (onnx and qnn backends).")
    target: str | None = Field(default=None, description="QNN target SoC, e.g. sm8650 (qnn backend).")
    precision: str | None = Field(
        default=None, description="Bundle graph precision (onnx): fp32, fp16, w8a16."
    )
    device: str = Field(default="cpu", description="Torch device: cpu, cuda or cuda:N.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="Compute dtype.")
    prompt_cache_entries: int = Field(
        default=1024, ge=0, description="Prompt-feature LRU cache entries (0 disables the cache)."
    )
    warmup: bool = Field(default=True, description="Run a real forward pass before reporting ready.")
    warmup_size: str | None = Field(
        default=None, description="WIDTHxHEIGHT of the warm-up generate. Empty: the model's default size."
    )


class BatchingSettings(_Group):
    """The dynamic batcher (Triton semantics: a full batch goes at once, else wait at most max_wait_ms)."""

    enabled: bool = Field(default=True, description="Batch compatible jobs together (false: batch size 1).")
    max_batch_size: int = Field(default=8, ge=1, le=64, description="Most images in one UNet batch.")
    max_wait_ms: float = Field(
        default=10.0, ge=0.0, description="Longest wait for a fuller batch, from the oldest image's arrival."
    )


class QueueSettings(_Group):
    """Admission control and start deadlines."""

    max_queued_jobs: int = Field(default=64, ge=1, description="Jobs waiting to start; more → 503.")
    retry_after_s: int = Field(default=2, ge=1, description="Smallest Retry-After sent with a 503.")
    default_start_timeout_s: float = Field(
        default=120.0, gt=0, description="A job not started within this many seconds fails with 504."
    )
    max_start_timeout_s: float = Field(
        default=600.0, gt=0, description="Largest timeout_s a request may ask."
    )


class LimitSettings(_Group):
    """Limits on what one request may ask for."""

    max_prompt_chars: int = Field(default=2000, ge=1, description="Longest prompt in characters.")
    max_n: int = Field(default=8, ge=1, le=64, description="Most images per request (`n`).")
    max_upload_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest edit source upload in bytes (413 above)."
    )
    max_image_pixels: int = Field(
        default=4096 * 4096,
        ge=64 * 64,
        description="Largest edit source width·height, checked from the header before decoding.",
    )
    max_output_side: int = Field(default=2048, ge=64, description="Largest output width or height.")


class AuthSettings(_Group):
    """API keys. With no keys configured the API is open (development only)."""

    api_keys: list[SecretStr] = Field(
        default_factory=list, description='Accepted Bearer keys, as JSON: ["key-1","key-2"].'
    )
    protect_metrics: bool = Field(default=False, description="Require a key for /metrics too.")


class JobSettings(_Group):
    """Retention of finished jobs and their events."""

    ttl_s: float = Field(default=3600.0, gt=0, description="Finished jobs are kept this long.")
    max_retained: int = Field(default=1000, ge=1, description="Most finished jobs kept (oldest dropped).")
    event_buffer: int = Field(default=1024, ge=8, description="Events kept per job for replay.")
    idempotency_ttl_s: float = Field(default=86400.0, gt=0, description="How long Idempotency-Keys are kept.")


class ScaleoutSettings(_Group):
    """Where job state, queues and events live."""

    broker: Literal["memory", "redis"] = Field(
        default="memory", description="memory (one process) or redis (scale-out; not implemented yet)."
    )
    redis_url: str | None = Field(default=None, description="redis://host:port/db for the redis broker.")


class ParitySettings(_Group):
    """Parity mode: reference traces and verifications on the bundle's graphs (``/v1/parity/*``)."""

    bundle: Path | None = Field(
        default=None,
        description="Bundle of the parity reference graphs. Empty: model.bundle (parity off without one).",
    )
    executors: list[str] = Field(
        default_factory=lambda: ["qnn:sm8650", "onnx:w8a16", "onnx:fp32"],
        description=(
            "Executors as JSON, first = default: qnn:<target>[/fp16] (emulator), onnx:<precision> (CPU EP)."
        ),
    )
    cache_entries: int = Field(default=32, ge=1, description="Reference traces cached per executor.")
    max_jobs: int = Field(default=256, ge=1, description="Finished parity jobs retained.")
    max_upload_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest verify body (device trace + tensors) in bytes.",
    )

    def effective_bundle(self, model: ModelSettings) -> Path | None:
        """The parity bundle: this setting, or the served bundle."""
        return self.bundle if self.bundle is not None else model.bundle


class ServerSettings(BaseSettings):
    """All settings of ``dreamlite serve``.

    Build it once (``ServerSettings()`` reads the environment) and pass it to
    :func:`server.app.create_app`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="forbid",
        validate_default=True,
    )

    host: str = Field(default="127.0.0.1", description="Address uvicorn binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port uvicorn binds.")
    log_level: str = Field(default="INFO", description="Logging level.")
    log_format: Literal["console", "json"] = Field(default="console", description="console or json lines.")
    encode_workers: int = Field(default=2, ge=1, le=32, description="Threads that encode output images.")
    public_base_url: str | None = Field(
        default=None, description="Base URL for `url` responses (default: from the request)."
    )
    model: ModelSettings = Field(default_factory=ModelSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    scaleout: ScaleoutSettings = Field(default_factory=ScaleoutSettings)
    parity: ParitySettings = Field(default_factory=ParitySettings)

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if self.scaleout.broker == "redis" and not self.scaleout.redis_url:
            raise ValueError("`scaleout.redis_url` is required when `scaleout.broker` is redis")
        if self.queue.default_start_timeout_s > self.queue.max_start_timeout_s:
            raise ValueError("`queue.default_start_timeout_s` must not exceed `queue.max_start_timeout_s`")
        if self.model.backend in ("onnx", "qnn") and self.model.bundle is None:
            raise ValueError(f"`model.bundle` is required for the {self.model.backend} backend")
        return self

    @property
    def effective_max_batch_size(self) -> int:
        """``max_batch_size``, or 1 when batching is off."""
        return self.batching.max_batch_size if self.batching.enabled else 1


def _env_lines(model: type[BaseModel], prefix: str) -> list[str]:
    lines: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append("")
            lines.append(f"# --- {name}: {(annotation.__doc__ or '').strip().splitlines()[0]}")
            lines.extend(_env_lines(annotation, f"{prefix}{name.upper()}__"))
            continue
        default: Any = info.get_default(call_default_factory=True)
        if default is None:
            shown = ""
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, list):
            shown = json.dumps(default)  # lists are given as JSON in the environment
        else:
            shown = str(default)
        lines.append(f"# {info.description}")
        lines.append(f"{prefix}{name.upper()}={shown}")
    return lines


def render_env_example() -> str:
    """The text of ``deploy/env.example``: every setting with its description and default."""
    header = [
        "# DreamLite server settings (generated by `python -m server.settings`; do not edit by hand).",
        "# Every variable is optional; the value shown is the default. Nested groups use `__`.",
    ]
    return "\n".join([*header, *_env_lines(ServerSettings, ENV_PREFIX)]) + "\n"


if __name__ == "__main__":  # pragma: no cover - exercised by the env.example test through the function
    sys.stdout.write(render_env_example())
