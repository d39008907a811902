"""Parity ① request: the canonical form of a request, whose hash is the ``request_id``.

Everything that can change a bit of the result is either in the canonical request or in the bundle
manifest that ``bundle_id`` names: the NFC-normalised prompt, task, seed, sizes, steps, noise source, the
edit source's RGB8 SHA-256, the bundle and the QNN target. Canonical JSON = sorted keys, no insignificant
whitespace, UTF-8 (RFC 8785 style for this schema: only strings, integers and null occur). Seeds are decimal
strings, because a uint64 does not survive every JSON parser.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model_runtime.errors import InvalidInputError
from model_runtime.recipe import rgb8_sha256
from model_runtime.types import SEED_MAX, SampleSpec

REQUEST_FORMAT: Literal["dreamlite-parity-request/1"] = "dreamlite-parity-request/1"


class EditImageRef(BaseModel):
    """The edit source, by content: SHA-256 of its decoded RGB8 pixels and its size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rgb8_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class CanonicalRequest(BaseModel):
    """One parity request. Build it with :meth:`create` (normalises the prompt and checks the image)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["dreamlite-parity-request/1"] = REQUEST_FORMAT
    task: Literal["generate", "edit"]
    prompt: str = Field(min_length=1, description="NFC-normalised UTF-8 prompt")
    seed: str = Field(pattern=r"^(0|[1-9][0-9]{0,19})$", description="decimal uint64")
    width: int = Field(ge=1, description="output width (edits are resized back to it)")
    height: int = Field(ge=1)
    working_width: int = Field(ge=1, description="width the model computes at")
    working_height: int = Field(ge=1)
    steps: int = Field(ge=1, le=200)
    noise: Literal["dln1", "torch-cpu"] = "dln1"
    edit_image: EditImageRef | None = None
    bundle_id: str | None = Field(default=None, description="manifest hash of the bundle; None = any")
    target: str | None = Field(default=None, description="QNN target (sm8650 …) or None for CPU references")

    @field_validator("prompt")
    @classmethod
    def _nfc(cls, value: str) -> str:
        if unicodedata.normalize("NFC", value) != value:
            raise ValueError("prompt must be NFC-normalised (use CanonicalRequest.create)")
        return value

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: str) -> str:
        if int(value) > SEED_MAX:
            raise ValueError(f"seed must be at most {SEED_MAX}")
        return value

    @classmethod
    def create(
        cls,
        *,
        task: Literal["generate", "edit"],
        prompt: str,
        seed: int,
        width: int,
        height: int,
        steps: int = 4,
        noise: Literal["dln1", "torch-cpu"] = "dln1",
        image: NDArray[np.uint8] | None = None,
        working_size: tuple[int, int] | None = None,
        bundle_id: str | None = None,
        target: str | None = None,
    ) -> CanonicalRequest:
        """Build a request from plain values (NFC-normalises the prompt, hashes the edit image)."""
        edit_ref = None
        if task == "edit":
            if image is None:
                raise InvalidInputError("image", "is required for an edit request.", given=None)
            edit_ref = EditImageRef(
                rgb8_sha256=rgb8_sha256(image), width=int(image.shape[1]), height=int(image.shape[0])
            )
        work = working_size or (width, height)
        return cls(
            task=task,
            prompt=unicodedata.normalize("NFC", prompt),
            seed=str(int(seed)),
            width=width,
            height=height,
            working_width=work[0],
            working_height=work[1],
            steps=steps,
            noise=noise,
            edit_image=edit_ref,
            bundle_id=bundle_id,
            target=target,
        )

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, UTF-8."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    @property
    def request_id(self) -> str:
        """SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.canonical_json()).hexdigest()

    def to_sample_spec(self, image: NDArray[np.uint8] | None = None) -> SampleSpec:
        """The pipeline spec of this request.

        Args:
            image: The edit source; its RGB8 SHA-256 must equal ``edit_image.rgb8_sha256``.

        Raises:
            InvalidInputError: Missing or different edit image.
        """
        if self.task == "generate":
            return SampleSpec(
                task="generate",
                prompt=self.prompt,
                seed=int(self.seed),
                width=self.working_width,
                height=self.working_height,
                steps=self.steps,
                noise=self.noise,
            )
        assert self.edit_image is not None
        if image is None:
            raise InvalidInputError(
                "image", "is required: the request names an edit source by its hash.", given=None
            )
        given = rgb8_sha256(image)
        if given != self.edit_image.rgb8_sha256:
            raise InvalidInputError(
                "image",
                "does not match the request's edit_image.rgb8_sha256.",
                allowed=self.edit_image.rgb8_sha256,
                given=given,
            )
        return SampleSpec(
            task="edit",
            prompt=self.prompt,
            seed=int(self.seed),
            width=self.width,
            height=self.height,
            steps=self.steps,
            noise=self.noise,
            image=image,
            working_size=(self.working_width, self.working_height),
        )


def load_request(data: bytes | str | dict[str, Any]) -> CanonicalRequest:
    """Parse a request document (JSON bytes/text or a dict).

    Raises:
        InvalidInputError: The document is not a valid canonical request.
    """
    from pydantic import ValidationError

    try:
        if isinstance(data, dict):
            return CanonicalRequest.model_validate(data)
        return CanonicalRequest.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "request"
        raise InvalidInputError(field, f"is invalid: {first.get('msg')}.", given=first.get("input")) from err
