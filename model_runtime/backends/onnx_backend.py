"""Stage ④ onnx backend: a bundle's fp32 / fp16 / w8a16 graphs on ONNX Runtime (CPU EP, or CUDA EP).

The backend runs the very files QA ships (hash-checked against the bundle manifest at load), not a
re-export: one ``InferenceSession`` per (component, working size), batch-1 static graphs fed one row at a
time. The session settings default to the bundle's *reference session* (graph optimisation level, thread
counts, deterministic compute), recorded in the manifest, so two servers produce the same bits; any
override is reported in ``BackendInfo.details``. The text encoder is the bundle's exported Qwen3-VL graphs
(:class:`model_runtime.bundle.OnnxTextEncoder`: onnxruntime, CPU EP, the manifest's pinned session, no
torch) when the bundle has them, else its host component (:class:`model_runtime.bundle.HostTextEncoder`,
torch on the CPU); ``details["text_encoder"]`` says which, and the two have different encoder ids.

On ``w8a16`` graphs the CPU EP evaluates the QDQ graph by dequantising between ops; that is a fast sanity
reference, not what the HTP computes (see the ``qnn`` backend for that).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model_runtime.backends.base import BackendInfo, Denoiser, ModelSpec, TextEncoder, VaeDecoder, VaeEncoder
from model_runtime.bundle import (
    PRECISIONS,
    Bundle,
    GraphDenoiser,
    GraphSession,
    GraphVaeDecoder,
    GraphVaeEncoder,
    SessionTable,
    bundle_text_encoder,
    open_bundle,
)
from model_runtime.errors import BackendUnavailableError, InvalidInputError, ModelLoadError
from model_runtime.sampler import Schedule

logger = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
OPTIMIZATION_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
REFERENCE_SESSION: dict[str, Any] = {
    "graph_optimization_level": "ORT_ENABLE_BASIC",
    "intra_op_num_threads": 1,
    "inter_op_num_threads": 1,
    "execution_mode": "ORT_SEQUENTIAL",
    "use_deterministic_compute": True,
}
"""The session settings parity numbers are measured with (the manifest records the exporter's copy).

BASIC keeps the graph's own op boundaries (ENABLE_ALL swaps Conv for NCHWc kernels and fuses QDQ into
integer kernels, which changes bits); one thread keeps reductions in one order.
"""


def session_options(settings: dict[str, Any]) -> Any:
    """``onnxruntime.SessionOptions`` from a JSON-able settings dict (see :data:`REFERENCE_SESSION`)."""
    import onnxruntime as ort

    level = str(settings.get("graph_optimization_level", REFERENCE_SESSION["graph_optimization_level"]))
    if level not in OPTIMIZATION_LEVELS:
        raise InvalidInputError.one_of("graph_optimization_level", OPTIMIZATION_LEVELS, level)
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = int(settings.get("intra_op_num_threads", 1))
    options.inter_op_num_threads = int(settings.get("inter_op_num_threads", 1))
    options.execution_mode = getattr(ort.ExecutionMode, str(settings.get("execution_mode", "ORT_SEQUENTIAL")))
    options.use_deterministic_compute = bool(settings.get("use_deterministic_compute", True))
    options.log_severity_level = 3  # errors only: the QNN/CPU EPs are chatty at warning level
    return options


def parse_device(device: str) -> tuple[str, list[Any]]:
    """``cpu`` / ``cuda`` / ``cuda:N`` → (device name, ORT providers list).

    Raises:
        BackendUnavailableError: CUDA asked for but the CUDA EP is not in this onnxruntime build.
    """
    import onnxruntime as ort

    if device == "cpu":
        return "cpu", [CPU_EP]
    if device == "cuda" or device.startswith("cuda:"):
        index = 0 if device == "cuda" else int(device.split(":", 1)[1])
        if CUDA_EP not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"device `{device}` needs onnxruntime's CUDAExecutionProvider, which this onnxruntime build "
                f"does not have (available: {', '.join(ort.get_available_providers())})"
            )
        return f"cuda:{index}", [(CUDA_EP, {"device_id": index}), CPU_EP]
    raise InvalidInputError.one_of("device", ["cpu", "cuda", "cuda:N"], device)


def open_session(path: Path, providers: list[Any], settings: dict[str, Any]) -> Any:
    """One ``InferenceSession``; load failures become :class:`ModelLoadError` naming the graph file."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(settings), providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, …)
        raise ModelLoadError(str(path), f"onnxruntime cannot load this graph: {err}") from err


class OnnxBackend:
    """A bundle's graphs of one precision on ONNX Runtime."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        session: dict[str, Any] | None = None,
        preload: bool = True,
    ) -> None:
        import onnxruntime as ort

        if precision not in bundle.precisions():
            raise InvalidInputError.one_of("precision", bundle.precisions(), precision)
        self.bundle = bundle
        self.precision = precision
        reference = dict(bundle.manifest.reference_session) or dict(REFERENCE_SESSION)
        self.session_settings = {**reference, **(session or {})}
        device_name, self.providers = parse_device(device)
        manifest = bundle.manifest
        self.spec: ModelSpec = bundle.model_spec()
        self.text_len: int | None = manifest.text.seq_len
        sizes = bundle.sizes(precision)
        self._effective: set[str] = set()
        self.sessions = SessionTable(factory=self._open, sizes=sizes)
        if preload:
            self.sessions.open_all(("unet", "vae_decoder", "vae_encoder"))
        text_encoder, encoder_id, text_facts = bundle_text_encoder(bundle, preload=preload)
        self.text_encoder: TextEncoder = text_encoder
        self.denoiser: Denoiser = GraphDenoiser(self.sessions, self.spec.vae_scale)
        self.vae_encoder: VaeEncoder = GraphVaeEncoder(self.sessions)
        self.vae_decoder: VaeDecoder = GraphVaeDecoder(self.sessions, self.spec.vae_scale)
        graphs = {g.key: g.sha256 for g in manifest.graphs if g.precision == precision}
        provider = self.providers[0] if isinstance(self.providers[0], str) else self.providers[0][0]
        if self._effective:
            provider = sorted(self._effective)[0] if CUDA_EP not in self._effective else CUDA_EP
        self.info = BackendInfo(
            name="onnx",
            device=device_name,
            dtype="float32",
            provider=provider,
            encoder_id=encoder_id,
            details={
                "bundle_id": bundle.bundle_id,
                "graph_sha256": graphs,
                "precision": precision,
                "sizes": [f"{w}x{h}" for w, h in sizes],
                "session_options": self.session_settings,
                "reference_session": self.session_settings == reference,
                "onnxruntime": ort.__version__,
                "text_encoder": text_facts,
                "parity_tolerances": manifest.parity.get("tolerances"),
            },
        )
        logger.info(
            "onnx backend ready bundle=%s precision=%s provider=%s",
            bundle.bundle_id[:12],
            precision,
            provider,
        )

    def _open(self, component: str, size: tuple[int, int]) -> GraphSession:
        entry = self.bundle.graph(component, self.precision, size)
        session = open_session(self.bundle.path(entry.path), self.providers, self.session_settings)
        self._effective.add(session.get_providers()[0])
        return session  # type: ignore[no-any-return]

    def schedule(self, width: int, height: int, steps: int) -> Schedule:
        """The manifest's float32 table (never recomputed)."""
        return self.bundle.schedule(width, height, steps)

    def supported_sizes(self) -> list[tuple[int, int]] | None:
        """The working sizes compiled into the bundle."""
        return self.bundle.sizes(self.precision)

    def artifact_sha256(self) -> str:
        """The bundle id."""
        return self.bundle.bundle_id

    def close(self) -> None:
        """Drop the sessions."""
        self.sessions.close()


def load_onnx_backend(
    source: str | Path,
    *,
    precision: str = "fp32",
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    optimization: str | None = None,
    bundle_id: str | None = None,
    verify: bool = True,
    preload: bool = True,
    target: str | None = None,
) -> OnnxBackend:
    """Open a bundle (verifying every file) and load one precision's graphs on ONNX Runtime.

    Args:
        source: Bundle folder.
        precision: ``fp32``, ``fp16`` or ``w8a16`` (must be in the bundle).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: Loop dtype; bundles run the loop in float32 (graphs take fp32 I/O).
        threads: Override the reference intra-op thread count (reported).
        optimization: Override the reference graph optimisation level (``ORT_ENABLE_ALL`` …, reported).
        bundle_id: Pin the expected bundle id.
        verify: Hash-check every file at load.
        preload: Open every session now (fail fast).
        target: Ignored by this backend (QNN targets are for ``qnn``); accepted for a uniform server call.
    """
    if dtype != "float32":
        raise InvalidInputError(
            "dtype",
            "is float32 for bundle backends (graph precision is chosen with `precision`).",
            given=dtype,
        )
    if precision not in PRECISIONS:
        raise InvalidInputError.one_of("precision", PRECISIONS, precision)
    if target is not None:
        logger.info("onnx backend ignores target=%s (QNN targets apply to the qnn backend)", target)
    overrides: dict[str, Any] = {}
    if threads is not None:
        overrides["intra_op_num_threads"] = int(threads)
    if optimization is not None:
        overrides["graph_optimization_level"] = optimization
    bundle = open_bundle(source, verify=verify, expected_id=bundle_id)
    return OnnxBackend(bundle, precision=precision, device=device, session=overrides, preload=preload)
