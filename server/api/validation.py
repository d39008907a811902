"""Stage ① validation: wire requests → :class:`~server.engine.job.JobRequest`, with the server's limits.

Messages name the field in backticks, the allowed values and the given value (TGI style), and every
problem is a 400 with the OpenAI envelope. The model's own rules (size multiples, steps, guidance) are
checked again by the runtime's ``plan`` when the engine admits the job, and reported the same way.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.api.protocol import SEED_MAX, EditRequest, GenerateRequest
from server.engine.job import JobRequest, OutputOptions
from server.errors import InvalidRequestError
from server.settings import ServerSettings

DEFAULT_QUALITY = 95


def parse_size(text: str, param: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT``.

    Raises:
        InvalidRequestError: Not of that form.
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InvalidRequestError.field(
            param, "must look like WIDTHxHEIGHT.", allowed='e.g. "1024x1024" or "auto"', given=text
        )
    return int(parts[0]), int(parts[1])


def _check_side(param: str, value: int, settings: ServerSettings, multiple: int | None = 32) -> None:
    low = 64 if multiple else 1
    high = settings.limits.max_output_side
    if value < low or value > high or (multiple and value % multiple):
        rule = f"a multiple of {multiple} from {low} to {high}" if multiple else f"in {low} … {high}"
        raise InvalidRequestError.field(param, f"must be {rule}.", given=value)


def _output_size(
    body: GenerateRequest | EditRequest, settings: ServerSettings, *, multiple: int | None
) -> tuple[int | None, int | None]:
    width = getattr(body, "width", None)
    height = getattr(body, "height", None)
    if body.size is not None and (width is not None or height is not None):
        raise InvalidRequestError.field("size", "cannot be combined with `width`/`height`.", given=body.size)
    from_size = body.size is not None and body.size != "auto"
    if from_size:
        width, height = parse_size(body.size, "size")  # type: ignore[arg-type]
    if (width is None) != (height is None):
        missing = "height" if height is None else "width"
        raise InvalidRequestError.field(missing, "must be given together with the other side.")
    if width is not None and height is not None:
        # Name the field the client actually sent (`size` "WxH", or `width` / `height`).
        _check_side("size" if from_size else "width", width, settings, multiple)
        _check_side("size" if from_size else "height", height, settings, multiple)
    return width, height


def _common(body: GenerateRequest | EditRequest, settings: ServerSettings, served_model: str | None) -> None:
    limits = settings.limits
    if not body.prompt.strip():
        raise InvalidRequestError.field("prompt", "must be a non-empty string.", given=body.prompt)
    if len(body.prompt) > limits.max_prompt_chars:
        raise InvalidRequestError.field(
            "prompt",
            "is too long.",
            allowed=f"at most {limits.max_prompt_chars} characters",
            given=f"{len(body.prompt)} characters",
        )
    if not 1 <= body.n <= limits.max_n:
        raise InvalidRequestError.field(
            "n", f"must be in 1 … {limits.max_n}.", allowed=f"1 … {limits.max_n}", given=body.n
        )
    if body.seed is not None and not 0 <= body.seed <= SEED_MAX - (body.n - 1):
        raise InvalidRequestError.field(
            "seed",
            "must be an integer in range (seed + n - 1 too).",
            allowed=f"0 … {SEED_MAX}",
            given=body.seed,
        )
    if body.steps is not None and not 1 <= body.steps <= 50:
        raise InvalidRequestError.field("steps", "must be in 1 … 50.", allowed="1 … 50", given=body.steps)
    if body.output_compression is not None and not 0 <= body.output_compression <= 100:
        raise InvalidRequestError.field(
            "output_compression", "must be in 0 … 100.", allowed="0 … 100", given=body.output_compression
        )
    if body.timeout_s is not None and not 0 < body.timeout_s <= settings.queue.max_start_timeout_s:
        allowed = f"0 < timeout_s ≤ {settings.queue.max_start_timeout_s:g}"
        raise InvalidRequestError.field(
            "timeout_s", "is out of range.", allowed=allowed, given=body.timeout_s
        )
    if body.model is not None and served_model is not None and body.model not in (served_model, "dreamlite"):
        raise InvalidRequestError.field(
            "model", "is not served here.", allowed=f"{served_model} (see /v1/models)", given=body.model
        )


def _output(body: GenerateRequest | EditRequest) -> OutputOptions:
    return OutputOptions(
        format=body.output_format,
        quality=DEFAULT_QUALITY if body.output_compression is None else body.output_compression,
        embed_metadata=body.metadata == "embed",
        response_format=body.response_format,
    )


def draw_seed() -> int:
    """A server-drawn seed (32 bits, so it is easy to copy and to type)."""
    return secrets.randbelow(2**32)


def validate_generation(
    body: GenerateRequest, settings: ServerSettings, served_model: str | None
) -> JobRequest:
    """A generate request as an engine job request.

    Raises:
        InvalidRequestError: A field is invalid.
    """
    _common(body, settings, served_model)
    width, height = _output_size(body, settings, multiple=32)
    seed = draw_seed() if body.seed is None else body.seed
    return JobRequest(
        task="generate",
        prompt=body.prompt,
        seed=seed,
        seed_drawn=body.seed is None,
        n=body.n,
        width=width,
        height=height,
        steps=body.steps,
        noise=body.noise,
        output=_output(body),
        deterministic=body.deterministic,
        start_timeout_s=body.timeout_s or settings.queue.default_start_timeout_s,
        previews=body.previews,
        model=body.model,
        guidance_scale=body.guidance_scale,
        image_guidance_scale=body.image_guidance_scale,
    )


def validate_edit(
    body: EditRequest,
    image: NDArray[np.uint8],
    image_sha256: str,
    settings: ServerSettings,
    served_model: str | None,
) -> JobRequest:
    """An edit request (source already decoded) as an engine job request.

    Raises:
        InvalidRequestError: A field is invalid.
    """
    _common(body, settings, served_model)
    if body.mask is not None:
        raise InvalidRequestError.field(
            "mask", "is not supported: DreamLite edits follow the instruction, not a mask.", allowed="omit it"
        )
    width, height = _output_size(body, settings, multiple=None)
    working: tuple[int, int] | None = None
    if body.working_size is not None:
        working = parse_size(body.working_size, "working_size")
        _check_side("working_size", working[0], settings)
        _check_side("working_size", working[1], settings)
    seed = draw_seed() if body.seed is None else body.seed
    return JobRequest(
        task="edit",
        prompt=body.prompt,
        seed=seed,
        seed_drawn=body.seed is None,
        n=body.n,
        width=width,
        height=height,
        steps=body.steps,
        noise=body.noise,
        image=image,
        image_sha256=image_sha256,
        working_size=working,
        output=_output(body),
        deterministic=body.deterministic,
        start_timeout_s=body.timeout_s or settings.queue.default_start_timeout_s,
        previews=body.previews,
        model=body.model,
        guidance_scale=body.guidance_scale,
        image_guidance_scale=body.image_guidance_scale,
    )


def fingerprint(task: str, fields: dict[str, Any], image_sha256: str | None = None) -> str:
    """Hash of what the client sent (before the server draws a seed), for Idempotency-Key conflicts."""
    canonical = json.dumps(
        {"task": task, "fields": fields, "image": image_sha256}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def describe_pydantic_errors(errors: Sequence[Any]) -> InvalidRequestError:
    """The first pydantic/FastAPI validation error as a 400 in the house phrasing."""
    if not errors:
        return InvalidRequestError("the request is invalid")
    first = errors[0]
    loc = [
        str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header", "form")
    ]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    message = str(first.get("msg", "is invalid"))
    given = first.get("input")
    if kind == "json_invalid":
        return InvalidRequestError(f"the body is not valid JSON: {message}", code="invalid_json")
    if kind == "missing":
        if param is None:  # no body at all
            return InvalidRequestError(
                "the body is empty: send a JSON object (at least `prompt`).",
                param="body",
                code="missing_field",
            )
        return InvalidRequestError(f"`{param}` is required.", param=param, code="missing_field")
    if kind == "extra_forbidden":
        return InvalidRequestError(f"`{param}` is not a known field.", param=param, code="unknown_field")
    allowed = None
    ctx = first.get("ctx") or {}
    if "expected" in ctx:
        allowed = str(ctx["expected"])
    if message.startswith("Input should be"):
        message = "must be" + message[len("Input should be") :]
    return InvalidRequestError.field(
        param or "body",
        message[0].lower() + message[1:] + ".",
        allowed=allowed,
        given=None if isinstance(given, dict) else given,
    )
