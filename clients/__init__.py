"""Python client for the DreamLite server (httpx, sync and async; no server or runtime imports).

``DreamLite`` / ``AsyncDreamLite`` expose ``images.generate``, ``images.edit``, ``jobs.get``,
``jobs.cancel`` (and ``AsyncDreamLite.events`` for WebSocket events). Errors are typed per the server's
``error_type`` (see :mod:`clients.errors`); retryable ones honour ``Retry-After``.
"""

from clients.client import AsyncDreamLite, DreamLite
from clients.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    DeadlineExceededError,
    DreamLiteError,
    GenerationError,
    IdempotencyConflictError,
    InternalServerError,
    InvalidRequestError,
    JobCanceledError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from clients.types import ImageData, ImagesResponse, JobEvent, JobObject

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncDreamLite",
    "AuthenticationError",
    "ConflictError",
    "DeadlineExceededError",
    "DreamLite",
    "DreamLiteError",
    "GenerationError",
    "IdempotencyConflictError",
    "ImageData",
    "ImagesResponse",
    "InternalServerError",
    "InvalidRequestError",
    "JobCanceledError",
    "JobEvent",
    "JobObject",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
]
