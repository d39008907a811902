"""Errors of the inference runtime (all stages).

The tree::

    ModelRuntimeError
    ├── InvalidInputError        a caller's mistake (bad size, empty prompt, unreadable image); names
    │                            the field, the allowed values and the given value (HTTP 400).
    ├── ModelLoadError           a folder or bundle is missing, incomplete or inconsistent; names the file.
    ├── BackendUnavailableError  a backend's framework or provider is not usable on this machine.
    ├── CanceledError            every sample of a run was canceled between steps.
    └── InferenceError           a backend failed while computing (the batch fails, the process lives).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ModelRuntimeError(Exception):
    """Base class of every error raised by ``model_runtime``."""


class InvalidInputError(ModelRuntimeError, ValueError):
    """A request value the runtime cannot take.

    Attributes:
        field: The name of the offending input (``width``, ``prompt``, ``image`` ...).
        allowed: A short description of the allowed values.
        given: The value that was given (shortened for the message).
    """

    def __init__(self, field: str, message: str, *, allowed: str | None = None, given: Any = None) -> None:
        self.field = field
        self.allowed = allowed
        self.given = given
        parts = [f"`{field}` {message}"]
        if allowed is not None:
            parts.append(f"Allowed: {allowed}.")
        if given is not None:
            shown = repr(given)
            parts.append(f"Given: {shown if len(shown) <= 80 else shown[:77] + '...'}.")
        super().__init__(" ".join(parts))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the original fields (errors cross process boundaries in parity workers)."""
        return (_rebuild_invalid_input, (self.field, str(self), self.allowed, self.given))

    @classmethod
    def one_of(cls, field: str, allowed: Iterable[Any], given: Any) -> InvalidInputError:
        """An error for a value outside an enumerated set."""
        values = ", ".join(str(a) for a in allowed)
        return cls(field, "must be one of the allowed values.", allowed=values, given=given)


def _rebuild_invalid_input(field: str, text: str, allowed: str | None, given: Any) -> InvalidInputError:
    error = InvalidInputError.__new__(InvalidInputError)
    Exception.__init__(error, text)
    error.field, error.allowed, error.given = field, allowed, given
    return error


class ModelLoadError(ModelRuntimeError):
    """A model folder or device bundle cannot be loaded; the message names the file."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the original fields."""
        return (ModelLoadError, (self.path, self.detail))


class BackendUnavailableError(ModelRuntimeError):
    """A backend cannot run here (framework missing, provider not available)."""


class CanceledError(ModelRuntimeError):
    """Every sample of a run was canceled."""


class InferenceError(ModelRuntimeError):
    """A backend failed during computation; the batch fails, the runtime stays usable."""
