"""Request validation: sizes, limits, seeds, fingerprints and the pydantic → 400 phrasing."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from server.api.protocol import EditRequest, GenerateRequest
from server.api.validation import (
    describe_pydantic_errors,
    fingerprint,
    parse_size,
    validate_edit,
    validate_generation,
)
from server.errors import InvalidRequestError
from server.settings import ServerSettings

SETTINGS = ServerSettings(limits={"max_n": 4, "max_prompt_chars": 20})


def test_parse_size() -> None:
    assert parse_size("512x768", "size") == (512, 768)
    with pytest.raises(InvalidRequestError, match="WIDTHxHEIGHT"):
        parse_size("512*768", "size")


def test_generation_defaults_draw_a_seed_and_keep_sizes_open() -> None:
    job = validate_generation(GenerateRequest(prompt="hi"), SETTINGS, "m")
    assert job.task == "generate"
    assert job.seed_drawn
    assert 0 <= job.seed < 2**32
    assert job.width is None
    assert job.height is None
    assert job.output.format == "png"
    assert job.output.embed_metadata
    assert [job.spec(i).seed for i in range(3)] == [job.seed, job.seed + 1, job.seed + 2]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "1000x512"}, "size"),
        ({"size": "512x20"}, "size"),
        ({"size": "512x512", "width": 512}, "size"),
        ({"n": 5}, "n"),
        ({"prompt": "x" * 21}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"seed": 2**64 - 1, "n": 2}, "seed"),
        ({"model": "other"}, "model"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_generation_errors_name_their_field(fields: dict[str, object], param: str) -> None:
    body = GenerateRequest.model_validate({"prompt": "hi", **fields})
    with pytest.raises(InvalidRequestError) as info:
        validate_generation(body, SETTINGS, "m")
    assert info.value.param == param
    assert f"`{param}`" in info.value.message


def test_edit_keeps_any_output_size_and_checks_working_size() -> None:
    image = np.zeros((10, 20, 3), np.uint8)
    job = validate_edit(EditRequest(prompt="x", image="-", size="33x17"), image, "h", SETTINGS, None)
    assert (job.width, job.height) == (33, 17)
    assert job.image_sha256 == "h"
    with pytest.raises(InvalidRequestError) as info:
        validate_edit(EditRequest(prompt="x", image="-", working_size="100x96"), image, "h", SETTINGS, None)
    assert info.value.param == "working_size"
    with pytest.raises(InvalidRequestError) as info:
        validate_edit(EditRequest(prompt="x", image="-", mask="m"), image, "h", SETTINGS, None)
    assert info.value.param == "mask"


def test_fingerprint_ignores_key_order_and_sees_the_image() -> None:
    a = fingerprint("edit", {"prompt": "x", "n": 1}, "img1")
    assert a == fingerprint("edit", {"n": 1, "prompt": "x"}, "img1")
    assert a != fingerprint("edit", {"n": 1, "prompt": "x"}, "img2")
    assert a != fingerprint("generate", {"n": 1, "prompt": "x"}, "img1")


def test_pydantic_errors_become_house_phrasing() -> None:
    with pytest.raises(ValidationError) as info:
        GenerateRequest.model_validate({"prompt": "x", "n": "lots", "extra": 1})
    error = describe_pydantic_errors(info.value.errors())
    assert error.param == "n"
    assert error.message.startswith("`n` must be a valid integer")
    with pytest.raises(ValidationError) as info:
        GenerateRequest.model_validate({"prompt": "x", "surprise": 1})
    assert describe_pydantic_errors(info.value.errors()).code == "unknown_field"
