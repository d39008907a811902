"""The error taxonomy: fixed status codes, stable snake_case types, the OpenAI envelope, Retry-After."""

from __future__ import annotations

import re

import pytest

from server.errors import (
    ERROR_CLASSES,
    InvalidRequestError,
    NotReadyError,
    OverloadedError,
    ServerError,
    error_from,
)


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_every_class_has_a_status_and_a_stable_type(cls: type[ServerError]) -> None:
    assert 400 <= cls.status_code <= 599
    assert re.fullmatch(r"[a-z][a-z_]*", cls.error_type)
    error = cls("boom", param="field")
    body = error.to_body()
    assert body == {
        "error": {"type": cls.error_type, "code": cls.error_type, "message": "boom", "param": "field"}
    }
    assert error_from(cls.error_type, "boom").__class__ is cls


def test_types_are_unique() -> None:
    types = [cls.error_type for cls in ERROR_CLASSES]
    assert len(types) == len(set(types))


def test_client_errors_are_4xx_and_overload_is_503_with_retry_after() -> None:
    assert InvalidRequestError.status_code == 400
    error = OverloadedError("full", retry_after_s=4)
    assert error.status_code == 503
    assert error.headers() == {"Retry-After": "4"}
    assert NotReadyError.status_code == 503
    assert error_from("no_such_type", "x").__class__ is ServerError


def test_field_message_names_field_allowed_and_given() -> None:
    error = InvalidRequestError.field("width", "must be one of 512, 768, 1024.", given=1000)
    assert error.message == "`width` must be one of 512, 768, 1024. Given: 1000."
    assert error.param == "width"
