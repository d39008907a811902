"""The client's wire types and exceptions stay in step with the server's protocol and error taxonomy."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from clients import errors as client_errors
from clients import types as client_types
from server.api import protocol
from server.errors import ERROR_CLASSES


@pytest.mark.parametrize(
    "name", ["ErrorBody", "ImageData", "Usage", "ImagesResponse", "Progress", "JobUrls", "JobObject"]
)
def test_same_fields_as_the_server(name: str) -> None:
    server_model: type[BaseModel] = getattr(protocol, name)
    client_model: type[BaseModel] = getattr(client_types, name)
    assert set(server_model.model_fields) == set(client_model.model_fields)
    for field, info in server_model.model_fields.items():
        assert info.is_required() == client_model.model_fields[field].is_required(), field


def test_every_server_error_type_has_a_client_class() -> None:
    for cls in ERROR_CLASSES:
        client_cls = client_errors.ERROR_TYPES[cls.error_type]
        assert client_cls.error_type == cls.error_type
        assert client_cls.retryable == cls.retryable, cls.error_type
