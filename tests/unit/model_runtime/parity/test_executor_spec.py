"""Parity executor names: ``qnn:<target>[/<precision>]`` and ``onnx:<precision>``."""

from __future__ import annotations

import pytest

from model_runtime.errors import InvalidInputError
from model_runtime.parity.worker import ExecutorSpec


@pytest.mark.parametrize(
    ("name", "backend", "options"),
    [
        ("qnn:sm8650", "qnn", {"target": "sm8650", "precision": "w8a16"}),
        ("qnn:sm8650/fp16", "qnn", {"target": "sm8650", "precision": "fp16"}),
        ("onnx:w8a16", "onnx", {"precision": "w8a16"}),
    ],
)
def test_executor_names_load_the_named_contexts(name: str, backend: str, options: dict[str, str]) -> None:
    spec = ExecutorSpec.parse(name)
    assert spec.backend == backend
    assert spec.load_options() == options


@pytest.mark.parametrize("name", ["qnn", "qnn:", "tflite:sm8650", "sm8650"])
def test_bad_executor_names_say_the_allowed_forms(name: str) -> None:
    with pytest.raises(InvalidInputError, match=r"qnn:<target>\[/<precision>\] or onnx:<precision>"):
        ExecutorSpec.parse(name)
