"""Parity ⑧ trace: the versioned per-stage trace format (JSON, plus optional ``.npz`` tensors).

A trace lists the stages of one request in pipeline order. Each stage records the SHA-256 of its tensor's
canonical bytes (dtype + shape + little-endian data), summary statistics and a 32-value projection
fingerprint (:mod:`model_runtime.parity.tensors`); the tensors themselves travel in an optional ``.npz``
keyed by stage name. The server's reference traces and the device traces are made by the same function,
:func:`trace_from_result`, from the pipeline's own intermediates.

Stage names, in order (edit-only stages marked *)::

    tokens, source_vlm*, source_vae*, vlm_pixels*, text_features, noise, condition_latent,
    step{i}.unet_out, step{i}.latents  (i = 0 … steps−1),
    decoded, image, output*   (image = RGB8 at the working size; output = resized back, edits only)
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from model_runtime.errors import InvalidInputError
from model_runtime.parity.canonical import CanonicalRequest
from model_runtime.parity.tensors import fingerprint, tensor_sha256, tensor_stats
from model_runtime.types import Trace

TRACE_FORMAT: Literal["dreamlite-trace/1"] = "dreamlite-trace/1"


class StageRecord(BaseModel):
    """One stage of a trace."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: str
    shape: list[int]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    stats: dict[str, float]
    fingerprint: list[float]


class ParityTrace(BaseModel):
    """A per-stage trace of one canonical request on one executor."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["dreamlite-trace/1"] = TRACE_FORMAT
    request_id: str
    request: CanonicalRequest
    executor: dict[str, Any] = Field(description="name, backend, provider, target, dtype")
    environment: dict[str, Any] = Field(default_factory=dict, description="versions and settings")
    stages: list[StageRecord]

    def stage(self, name: str) -> StageRecord | None:
        """The record of a stage, or None."""
        return next((s for s in self.stages if s.name == name), None)

    @property
    def stage_names(self) -> list[str]:
        """Stage names in order."""
        return [s.name for s in self.stages]


def stage_arrays(trace: Trace, steps: int, task: str) -> list[tuple[str, NDArray[Any]]]:
    """Map a pipeline :class:`Trace` (conformance names) to parity stages, in order."""
    arrays = trace.arrays

    def pick_prefix(prefix: str) -> NDArray[Any]:
        keys = [k for k in arrays if k.startswith(prefix)]
        if len(keys) != 1:
            raise KeyError(f"expected one {prefix}* array, found {keys}")
        return arrays[keys[0]]

    out: list[tuple[str, NDArray[Any]]] = [("tokens", arrays["input_ids"])]
    if task == "edit":
        out += [
            ("source_vlm", pick_prefix("source_vlm_")),
            ("source_vae", pick_prefix("source_vae_")),
            ("vlm_pixels", arrays["vlm_pixel_values"]),
        ]
    out += [
        ("text_features", arrays["prompt_embeds"]),
        ("noise", arrays["noise"]),
        ("condition_latent", arrays["cond_latent"]),
    ]
    for i in range(steps):
        out += [
            (f"step{i}.unet_out", arrays[f"step{i}_unet_out"]),
            (f"step{i}.latents", arrays[f"step{i}_latents"]),
        ]
    out.append(("decoded", arrays["decoded"]))
    if task == "edit":
        out += [("image", pick_prefix("output_")), ("output", arrays["output"])]
    else:
        out.append(("image", arrays["output"]))
    return out


def record(name: str, array: NDArray[Any]) -> StageRecord:
    """Hash, statistics and fingerprint of one stage tensor."""
    a = np.ascontiguousarray(array)
    return StageRecord(
        name=name,
        dtype=a.dtype.name,
        shape=[int(s) for s in a.shape],
        sha256=tensor_sha256(a),
        stats=tensor_stats(a),
        fingerprint=fingerprint(a),
    )


def runtime_environment() -> dict[str, Any]:
    """Versions and host facts that can change bits (recorded in every trace)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for package in ("onnxruntime", "onnxruntime-qnn"):
        with contextlib.suppress(PackageNotFoundError):
            env[package.replace("-", "_")] = version(package)
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
        env["cpu_isa"] = ",".join(
            f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f" {f}" in flags
        )
    except (OSError, IndexError):
        pass
    return env


def trace_from_result(
    request: CanonicalRequest,
    trace: Trace,
    executor: dict[str, Any],
    environment: dict[str, Any] | None = None,
) -> tuple[ParityTrace, dict[str, NDArray[Any]]]:
    """Build a parity trace (and its tensors) from a pipeline run of ``request``."""
    stages = stage_arrays(trace, request.steps, request.task)
    doc = ParityTrace(
        request_id=request.request_id,
        request=request,
        executor=executor,
        environment=environment if environment is not None else runtime_environment(),
        stages=[record(name, array) for name, array in stages],
    )
    return doc, {name: np.ascontiguousarray(array) for name, array in stages}


def save_trace(path: Path, trace: ParityTrace, tensors: dict[str, NDArray[Any]] | None = None) -> list[Path]:
    """Write ``path`` (JSON) and, with tensors, ``path`` with suffix ``.npz``. Returns the files written."""
    path.write_text(trace.model_dump_json(indent=1))
    written = [path]
    if tensors is not None:
        npz = path.with_suffix(".npz")
        np.savez_compressed(npz, allow_pickle=False, **tensors)
        written.append(npz)
    return written


def load_trace(path: Path) -> tuple[ParityTrace, dict[str, NDArray[Any]] | None]:
    """Read a trace JSON and its ``.npz`` sibling when present.

    Raises:
        InvalidInputError: Not a trace document.
    """
    try:
        doc = parse_trace(path.read_bytes())
    except OSError as err:
        raise InvalidInputError("trace", f"cannot be read ({err.strerror}).", given=str(path)) from err
    npz = path.with_suffix(".npz")
    return doc, (load_tensors(npz.read_bytes()) if npz.is_file() else None)


def parse_trace(data: bytes | str | dict[str, Any]) -> ParityTrace:
    """Validate a trace document.

    Raises:
        InvalidInputError: Not a valid ``dreamlite-trace/1`` document.
    """
    from pydantic import ValidationError

    try:
        if isinstance(data, dict):
            return ParityTrace.model_validate(data)
        return ParityTrace.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = "trace." + ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInputError(field, f"is invalid: {first.get('msg')}.") from err


def load_tensors(data: bytes) -> dict[str, NDArray[Any]]:
    """Read an ``.npz`` of stage tensors (no pickles).

    Raises:
        InvalidInputError: Not a readable npz.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as err:
        raise InvalidInputError(
            "tensors", "is not a readable .npz file.", given=f"{len(data)} bytes"
        ) from err


def dumps_canonical(trace: ParityTrace) -> str:
    """Compact JSON of a trace (for hashing or transport)."""
    return json.dumps(trace.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
