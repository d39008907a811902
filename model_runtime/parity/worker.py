"""Parity ⑤–⑧ worker: one executor per process (reference traces, verification, replay).

The QNN HTP emulator's SoC setting is process-global, so every parity executor — ``qnn:<target>`` (the
bundle's context binaries on the emulator) or ``onnx:<precision>`` (the bundle's graphs on the CPU EP) —
lives in its own worker process, loads the bundle once (:func:`init_worker`) and then serves calls one
at a time. Arguments and results are plain bytes/str/dicts so they cross the process boundary cheaply.
Each worker keeps an LRU of the reference traces it computed, keyed by ``(request_id, bundle_id)``.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.errors import InvalidInputError

_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    """A parity executor: ``qnn:<target>[/<precision>]`` or ``onnx:<precision>`` over one bundle."""

    name: str
    backend: str
    option: str

    @classmethod
    def parse(cls, name: str) -> ExecutorSpec:
        """Parse ``qnn:sm8650`` (its w8a16 contexts) / ``qnn:sm8650/fp16`` / ``onnx:w8a16``.

        Raises:
            InvalidInputError: Not of that form.
        """
        backend, _, option = name.partition(":")
        if backend not in ("qnn", "onnx") or not option:
            raise InvalidInputError(
                "executor",
                "must be qnn:<target>[/<precision>] or onnx:<precision>.",
                allowed="e.g. qnn:sm8650, qnn:sm8650/fp16, onnx:w8a16",
                given=name,
            )
        return cls(name=name, backend=backend, option=option)

    def load_options(self) -> dict[str, Any]:
        """Keyword options for :func:`model_runtime.pipeline.load_pipeline`."""
        if self.backend == "qnn":
            target, _, precision = self.option.partition("/")
            return {"target": target, "precision": precision or "w8a16"}
        return {"precision": self.option}


def init_worker(bundle: str, executor: str, cache_entries: int = 32) -> None:
    """Process initializer: load the bundle on the executor once."""
    from model_runtime.pipeline import load_pipeline

    spec = ExecutorSpec.parse(executor)
    _STATE["executor"] = spec
    _STATE["pipeline"] = load_pipeline(Path(bundle), backend=spec.backend, **spec.load_options())
    _STATE["cache"] = OrderedDict()
    _STATE["cache_entries"] = cache_entries


def _npz_bytes(tensors: dict[str, NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **tensors)
    return buffer.getvalue()


def _decode_image(data: bytes | None) -> NDArray[np.uint8] | None:
    if data is None:
        return None
    from model_runtime.preprocess import decode_image

    return decode_image(data, field="edit_image")


def _reference(request_json: str, image: bytes | None) -> tuple[Any, dict[str, NDArray[Any]], bool]:
    from model_runtime.parity.canonical import load_request
    from model_runtime.parity.runner import run_request

    request = load_request(request_json)
    pipeline = _STATE["pipeline"]
    key = (request.request_id, pipeline.backend.info.details.get("bundle_id"))
    cache: OrderedDict[Any, Any] = _STATE["cache"]
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            trace, tensors = cache[key]
            return trace, tensors, True
    trace, tensors = run_request(
        pipeline, request, image=_decode_image(image), executor=_STATE["executor"].name
    )
    with _LOCK:
        cache[key] = (trace, tensors)
        while len(cache) > _STATE["cache_entries"]:
            cache.popitem(last=False)
    return trace, tensors, False


def reference(request_json: str, image: bytes | None = None) -> dict[str, Any]:
    """The reference trace of a request: ``{"trace": dict, "tensors_npz": bytes, "cached": bool}``."""
    trace, tensors, cached = _reference(request_json, image)
    return {"trace": trace.model_dump(mode="json"), "tensors_npz": _npz_bytes(tensors), "cached": cached}


def verify(
    request_json: str,
    device_trace_json: str,
    device_tensors_npz: bytes | None = None,
    image: bytes | None = None,
    replay: bool = False,
    tolerances_json: str | None = None,
) -> dict[str, Any]:
    """Compare a device trace with this executor's reference; optionally replay the first divergent stage.

    Returns:
        ``{"report": dict, "reference_image": bytes | None, "device_image": bytes | None}`` (images as npy).
    """
    from model_runtime.parity.canonical import load_request
    from model_runtime.parity.compare import Tolerances, compare_traces
    from model_runtime.parity.replay import replay_report
    from model_runtime.parity.trace import load_tensors, parse_trace

    request = load_request(request_json)
    device = parse_trace(device_trace_json)
    if device.request_id != request.request_id:
        raise InvalidInputError(
            "device_trace.request_id",
            "does not match the request.",
            allowed=request.request_id,
            given=device.request_id,
        )
    device_tensors = load_tensors(device_tensors_npz) if device_tensors_npz else None
    trace, tensors, _ = _reference(request_json, image)
    pipeline = _STATE["pipeline"]
    if tolerances_json:
        tolerances = Tolerances.model_validate_json(tolerances_json)
    else:
        declared = pipeline.backend.info.details.get("parity_tolerances")
        tolerances = Tolerances.model_validate(declared) if declared else Tolerances()
    report = compare_traces(
        trace, device, reference_tensors=tensors, device_tensors=device_tensors, tolerances=tolerances
    )
    if replay and report.first_divergent_stage and device_tensors is not None:
        try:
            report.replay = replay_report(
                pipeline, request, report.first_divergent_stage, device_tensors, tolerances
            )
        except InvalidInputError as err:
            report.replay = {
                "stage": report.first_divergent_stage,
                "outcome": "not_replayable",
                "explanation": str(err),
            }
    dev_image = device_tensors.get("image") if device_tensors else None
    return {
        "report": report.model_dump(mode="json"),
        "reference_image": _npy(tensors.get("image")),
        "device_image": _npy(dev_image),
    }


def _npy(array: NDArray[Any] | None) -> bytes | None:
    if array is None:
        return None
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def describe() -> dict[str, Any]:
    """The executor's backend facts (for the manifest endpoint)."""
    info = _STATE["pipeline"].backend.info
    return {
        "executor": _STATE["executor"].name,
        "backend": info.name,
        "provider": info.provider,
        "details": info.details,
    }
