"""Stage ⓪ errors: the one error taxonomy of the server (HTTP status, body, WS close code, metric label).

Every expected failure is raised as one of these classes; the exception handlers in :mod:`server.app`
turn it into the OpenAI error envelope ``{"error": {"type", "code", "message", "param"}}`` with the class's
status code (and ``Retry-After`` when set). ``error_type`` is stable snake_case and is used identically in
the body's ``type``, the ``error_type`` label of ``dreamlite_request_failures_total``, WebSocket error
frames and the client exception classes. The tree::

    ServerError                      500 internal_error
    ├── InvalidRequestError          400 invalid_request      (a field, its allowed values, the given value)
    ├── AuthenticationError          401 authentication_error
    ├── JobNotFoundError             404 not_found
    ├── ConflictError                409 conflict
    │   ├── IdempotencyConflictError 409 idempotency_conflict
    │   └── JobCanceledError         409 canceled             (a sync request whose job was canceled)
    ├── PayloadTooLargeError         413 payload_too_large
    ├── UnsupportedMediaTypeError    415 unsupported_media_type
    ├── OverloadedError              503 overloaded           (+ Retry-After; the admission queue is full)
    ├── NotReadyError                503 not_ready            (+ Retry-After; model loading or warming up)
    ├── DeadlineExceededError        504 deadline_exceeded    (the job did not start in time)
    └── GenerationError              500 generation_failed    (the runtime failed on a batch)
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServerError(Exception):
    """Base class: an error with a fixed HTTP status and a stable ``error_type``.

    Args:
        message: Human-readable text (no tracebacks, no secrets).
        param: The request field at fault, if any.
        code: A finer machine-readable code (defaults to ``error_type``).
        retry_after_s: Seconds for a ``Retry-After`` header, if the client should retry.
    """

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    ws_close_code: ClassVar[int] = 1011
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.error_type
        self.retry_after_s = retry_after_s

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error envelope."""
        return {
            "error": {
                "type": self.error_type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
            }
        }

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After``)."""
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class InvalidRequestError(ServerError):
    """A request value the server or the model cannot take (400)."""

    status_code = 400
    error_type = "invalid_request"
    ws_close_code = 1008

    @classmethod
    def field(
        cls, param: str, message: str, *, allowed: str | None = None, given: Any = None
    ) -> InvalidRequestError:
        """An error phrased "`param` message Allowed: … Given: …"."""
        parts = [f"`{param}` {message}"]
        if allowed is not None:
            parts.append(f"Allowed: {allowed}.")
        if given is not None:
            shown = repr(given) if not isinstance(given, str) else given
            parts.append(f"Given: {shown if len(shown) <= 80 else shown[:77] + '...'}.")
        return cls(" ".join(parts), param=param)


class AuthenticationError(ServerError):
    """Missing or wrong API key (401)."""

    status_code = 401
    error_type = "authentication_error"
    ws_close_code = 4401


class JobNotFoundError(ServerError):
    """No such job for this caller (404; other keys' jobs are reported the same way)."""

    status_code = 404
    error_type = "not_found"
    ws_close_code = 4404


class ConflictError(ServerError):
    """The request conflicts with the state of a job (409)."""

    status_code = 409
    error_type = "conflict"
    ws_close_code = 1008


class IdempotencyConflictError(ConflictError):
    """An Idempotency-Key was reused with a different request body (409)."""

    error_type = "idempotency_conflict"


class JobCanceledError(ConflictError):
    """A synchronous request's job was canceled (by ``POST /v1/jobs/{id}/cancel``) before it finished."""

    error_type = "canceled"


class PayloadTooLargeError(ServerError):
    """The request body or upload is larger than allowed (413)."""

    status_code = 413
    error_type = "payload_too_large"
    ws_close_code = 1009


class UnsupportedMediaTypeError(ServerError):
    """The request's content type is not accepted on this route (415)."""

    status_code = 415
    error_type = "unsupported_media_type"
    ws_close_code = 1003


class OverloadedError(ServerError):
    """The admission queue is full (503 + Retry-After)."""

    status_code = 503
    error_type = "overloaded"
    ws_close_code = 1013
    retryable = True


class NotReadyError(ServerError):
    """The model is not loaded and warmed yet (503 + Retry-After)."""

    status_code = 503
    error_type = "not_ready"
    ws_close_code = 1013
    retryable = True


class DeadlineExceededError(ServerError):
    """The job did not start before its start deadline (504)."""

    status_code = 504
    error_type = "deadline_exceeded"
    ws_close_code = 1011
    retryable = True


class GenerationError(ServerError):
    """The runtime failed while computing a batch (500)."""

    status_code = 500
    error_type = "generation_failed"
    ws_close_code = 1011


ERROR_CLASSES: tuple[type[ServerError], ...] = (
    ServerError,
    InvalidRequestError,
    AuthenticationError,
    JobNotFoundError,
    ConflictError,
    IdempotencyConflictError,
    JobCanceledError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    OverloadedError,
    NotReadyError,
    DeadlineExceededError,
    GenerationError,
)
"""Every class, for the docs' error table and the client contract test."""

_BY_TYPE: dict[str, type[ServerError]] = {cls.error_type: cls for cls in ERROR_CLASSES}


def error_from(
    error_type: str, message: str, *, param: str | None = None, code: str | None = None
) -> ServerError:
    """Rebuild a taxonomy error from its stable ``error_type`` (e.g. a stored job failure).

    Args:
        error_type: The stable type.
        message: The original message.
        param: The field at fault.
        code: The finer code.

    Returns:
        An instance of the matching class (``ServerError`` for an unknown type).
    """
    cls = _BY_TYPE.get(error_type, ServerError)
    return cls(message, param=param, code=code)
