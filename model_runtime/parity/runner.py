"""Parity ⑤–⑧ run: execute a canonical request on a pipeline and return its parity trace.

The server's reference, the QA CLI and the device simulator all call :func:`run_request`, which runs the
ordinary pipeline (the same code as ``/v1/generate``) with tracing on and converts its intermediates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.errors import InvalidInputError
from model_runtime.parity.canonical import CanonicalRequest
from model_runtime.parity.trace import ParityTrace, runtime_environment, trace_from_result
from model_runtime.pipeline import Pipeline


def executor_info(pipeline: Pipeline, name: str) -> dict[str, Any]:
    """What computed a trace: executor name, backend, provider, target, dtype, bundle and graph ids."""
    info = pipeline.backend.info
    out: dict[str, Any] = {
        "name": name,
        "backend": info.name,
        "provider": info.provider,
        "dtype": info.dtype,
        "target": info.details.get("target"),
        "bundle_id": info.details.get("bundle_id"),
    }
    if "graph_sha256" in info.details:
        out["graph_sha256"] = info.details["graph_sha256"]
    return out


def run_request(
    pipeline: Pipeline,
    request: CanonicalRequest,
    *,
    image: NDArray[np.uint8] | None = None,
    executor: str = "reference",
) -> tuple[ParityTrace, dict[str, NDArray[Any]]]:
    """Run ``request`` and trace every stage.

    Args:
        pipeline: A loaded pipeline (for bundle executors, on the request's bundle).
        request: The canonical request.
        image: The edit source (checked against the request's hash).
        executor: A name for the executor (``reference``, ``device-sim``, ``qnn-emulator`` …).

    Raises:
        InvalidInputError: The pipeline's bundle is not the request's, or the request is invalid.
    """
    bundle_id = pipeline.backend.info.details.get("bundle_id")
    if request.bundle_id is not None and bundle_id is not None and request.bundle_id != bundle_id:
        raise InvalidInputError(
            "bundle_id",
            "names a different bundle than the one loaded.",
            allowed=str(bundle_id),
            given=request.bundle_id,
        )
    target = pipeline.backend.info.details.get("target")
    if request.target is not None and target is not None and request.target != target:
        raise InvalidInputError(
            "target", "differs from the loaded QNN target.", allowed=str(target), given=request.target
        )
    spec = request.to_sample_spec(image)
    result = pipeline.run([spec], trace=True)[0]
    assert result.trace is not None
    environment = runtime_environment()
    for key in (
        "provider_options",
        "session_options",
        "qnn_sdk",
        "ort_graph_optimization_level",
        "intra_op_threads",
    ):
        if key in pipeline.backend.info.details:
            environment[key] = pipeline.backend.info.details[key]
    return trace_from_result(request, result.trace, executor_info(pipeline, executor), environment)
