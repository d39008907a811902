"""Client exceptions: one class per server ``error_type`` (the same stable names the server uses).

The tree::

    DreamLiteError
    ├── APIConnectionError            the server could not be reached (retried)
    │   └── APITimeoutError           the request timed out (retried)
    └── APIStatusError                the server answered with an error envelope
        ├── InvalidRequestError       400 invalid_request
        ├── AuthenticationError       401 authentication_error
        ├── NotFoundError             404 not_found
        ├── ConflictError             409 conflict
        │   ├── IdempotencyConflictError  409 idempotency_conflict
        │   └── JobCanceledError      409 canceled
        ├── PayloadTooLargeError      413 payload_too_large
        ├── UnsupportedMediaTypeError 415 unsupported_media_type
        ├── OverloadedError           503 overloaded          (retried, honouring Retry-After)
        ├── NotReadyError             503 not_ready           (retried, honouring Retry-After)
        ├── DeadlineExceededError     504 deadline_exceeded   (retried)
        ├── GenerationError           500 generation_failed
        └── InternalServerError       500 internal_error and anything unknown
"""

from __future__ import annotations

from typing import ClassVar


class DreamLiteError(Exception):
    """Base class of every client error."""


class APIConnectionError(DreamLiteError):
    """The server could not be reached."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIStatusError(DreamLiteError):
    """The server answered with an error.

    Attributes:
        status_code: HTTP status.
        error_type: The server's stable error type.
        code: The finer code.
        message: The server's message.
        param: The field at fault.
        retry_after_s: The ``Retry-After`` header, if any.
    """

    error_type: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {self.error_type}: {message}")
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequestError(APIStatusError):
    """400: a field is invalid (see ``param``)."""

    error_type = "invalid_request"


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""

    error_type = "authentication_error"


class NotFoundError(APIStatusError):
    """404: unknown, expired or someone else's job."""

    error_type = "not_found"


class ConflictError(APIStatusError):
    """409: the request conflicts with a job's state."""

    error_type = "conflict"


class IdempotencyConflictError(ConflictError):
    """409: the Idempotency-Key was used with a different body."""

    error_type = "idempotency_conflict"


class JobCanceledError(ConflictError):
    """409: the job of a sync request was canceled."""

    error_type = "canceled"


class PayloadTooLargeError(APIStatusError):
    """413: upload or image too large."""

    error_type = "payload_too_large"


class UnsupportedMediaTypeError(APIStatusError):
    """415: wrong content type."""

    error_type = "unsupported_media_type"


class OverloadedError(APIStatusError):
    """503: the queue is full; retried after ``Retry-After``."""

    error_type = "overloaded"
    retryable = True


class NotReadyError(APIStatusError):
    """503: the model is loading; retried after ``Retry-After``."""

    error_type = "not_ready"
    retryable = True


class DeadlineExceededError(APIStatusError):
    """504: the job did not start before its deadline; retried."""

    error_type = "deadline_exceeded"
    retryable = True


class GenerationError(APIStatusError):
    """500: the runtime failed on the batch."""

    error_type = "generation_failed"


class InternalServerError(APIStatusError):
    """500 (or any unknown error type)."""

    error_type = "internal_error"


ERROR_TYPES: dict[str, type[APIStatusError]] = {
    cls.error_type: cls
    for cls in (
        InvalidRequestError,
        AuthenticationError,
        NotFoundError,
        ConflictError,
        IdempotencyConflictError,
        JobCanceledError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        OverloadedError,
        NotReadyError,
        DeadlineExceededError,
        GenerationError,
        InternalServerError,
    )
}
