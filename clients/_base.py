"""Client internals shared by the sync and async clients: request building, errors and the retry policy.

Retries (openai-python style): connection errors, timeouts and retryable error types (``overloaded``,
``not_ready``, ``deadline_exceeded``) are retried up to ``max_retries`` times, waiting ``Retry-After``
when the server sent one, else an exponential backoff with jitter. Every create call carries an
``Idempotency-Key`` (generated when the caller gives none), so a retry never creates a second job.
"""

from __future__ import annotations

import base64
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from clients.errors import ERROR_TYPES, APIStatusError, InternalServerError

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MAX_RETRIES = 2
MAX_BACKOFF_S = 30.0


@dataclass
class RequestSpec:
    """One HTTP call to make."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization`` for an API key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """The entries that are not None."""
    return {k: v for k, v in values.items() if v is not None}


def create_headers(idempotency_key: str | None, wait: bool) -> dict[str, str]:
    """Headers of a create call (Idempotency-Key always; ``Prefer: respond-async`` unless waiting)."""
    headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4().hex}"}
    if not wait:
        headers["Prefer"] = "respond-async"
    return headers


def read_image(image: bytes | str | Path) -> tuple[str, bytes]:
    """(file name, bytes) of an edit source given as bytes or a path."""
    if isinstance(image, bytes):
        return "image.png", image
    path = Path(image)
    return path.name, path.read_bytes()


def edit_spec(
    image: bytes | str | Path, fields: dict[str, Any], headers: dict[str, str], *, multipart: bool, path: str
) -> RequestSpec:
    """The request of an edit, as multipart (default) or JSON with base64."""
    name, data = read_image(image)
    if multipart:
        form = {k: _form_value(v) for k, v in fields.items()}
        return RequestSpec(
            "POST",
            path,
            data=form,
            files={"image": (name, data, "application/octet-stream")},
            headers=headers,
        )
    body = {**fields, "image": base64.b64encode(data).decode()}
    return RequestSpec("POST", path, json=body, headers=headers)


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The typed exception for an error response."""
    retry_after = _retry_after(response)
    try:
        error = response.json()["error"]
        error_type = str(error.get("type"))
        message = str(error.get("message"))
        code, param = error.get("code"), error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        error_type, message, code, param = "internal_error", response.text[:500], None, None
    cls = ERROR_TYPES.get(error_type, InternalServerError)
    return cls(message, status_code=response.status_code, code=code, param=param, retry_after_s=retry_after)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def backoff_s(attempt: int, retry_after_s: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    if retry_after_s is not None:
        return min(retry_after_s, MAX_BACKOFF_S)
    return float(min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1) * (1 + random.random() * 0.25)))
