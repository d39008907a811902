"""Stage ④ loading: the device bundle — manifest model, content verification, and the bundle-side components.

A bundle is what ``dreamlite export`` writes and what QA ships to phones: static-shape ONNX graphs per
working size and precision, QNN EP context binaries per target, the tokenizer and processor config, the
text encoder the host runs, and ``manifest.json``. The manifest lists the SHA-256 of every other file, so
the **bundle id is the SHA-256 of the manifest file's bytes**: one hash names every bit that was shipped.

This module is shared by the ``onnx`` and ``qnn`` backends (which must not import each other) and by the
exporter and parity tools:

* :class:`Manifest` (pydantic) and :func:`open_bundle` — parse, check every file's hash, refuse a bundle
  whose files do not match (:class:`~model_runtime.errors.ModelLoadError` naming the file);
* schedule tables stored as float32 hex, so a phone-like runtime never recomputes them (no diffusers);
* :class:`GraphDenoiser` / :class:`GraphVaeEncoder` / :class:`GraphVaeDecoder` — the backend contract's
  components over any session with ORT's ``run(output_names, feeds)`` signature (graphs are batch 1: rows
  are run one after another);
* :class:`OnnxTextEncoder` — the Qwen3-VL text path as the bundle's exported ONNX graphs
  (``text_encoder_onnx/``: vision tower + language model up to the final norm), run by onnxruntime on the
  CPU EP with a pinned session, the phone app's text runtime stand-in (no torch);
* :class:`HostTextEncoder` — the fallback for bundles exported without those graphs: the bundle's copy of
  ``text_encoder/`` run on the host with torch;
* :func:`bundle_text_encoder` — which of the two a bundle gets, its encoder id and the facts to report.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, ValidationError

from model_runtime.backends.base import ModelSpec, TextEncoderInput
from model_runtime.errors import InvalidInputError, ModelLoadError
from model_runtime.folder import FolderConfig, hash_file
from model_runtime.sampler import Schedule

BUNDLE_FORMAT = "dreamlite-bundle/1"
MANIFEST_NAME = "manifest.json"
Precision = Literal["fp32", "fp16", "w8a16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "w8a16")
Component = Literal["unet", "vae_decoder", "vae_encoder"]
COMPONENTS: tuple[Component, ...] = ("unet", "vae_decoder", "vae_encoder")


# ---------------------------------------------------------------------------------------------- hex tables
def f32_hex(values: Iterable[float] | NDArray[np.float32]) -> list[str]:
    """Float32 values as 8-digit big-endian IEEE-754 hex words (``1.0`` → ``3f800000``)."""
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    return [f"{int(bits):08x}" for bits in array.view(np.uint32)]


def f32_from_hex(words: Sequence[str]) -> NDArray[np.float32]:
    """Inverse of :func:`f32_hex` (exact)."""
    bits = np.asarray([int(w, 16) for w in words], dtype=np.uint32)
    out: NDArray[np.float32] = bits.view(np.float32).copy()
    return out


def f64_hex(value: float) -> str:
    """A float64 as 16-digit big-endian IEEE-754 hex."""
    return struct.pack(">d", value).hex()


def f64_from_hex(word: str) -> float:
    """Inverse of :func:`f64_hex`."""
    value: float = struct.unpack(">d", bytes.fromhex(word))[0]
    return value


# ---------------------------------------------------------------------------------------------- manifest
class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Model):
    """One graph input or output."""

    name: str
    shape: list[int]
    dtype: str


class FileEntry(_Model):
    """Content hash and size of one shipped file."""

    sha256: str
    bytes: int


class GraphEntry(_Model):
    """One ONNX graph: component × precision × working size."""

    component: Component
    precision: Precision
    width: int
    height: int
    path: str
    sha256: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    fusions: dict[str, int] = {}
    external_data: list[str] = []

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the working size."""
        return (self.width, self.height)

    @property
    def key(self) -> str:
        """``unet/64x64`` style name used in ``graph_sha256`` maps."""
        return f"{self.component}/{self.width}x{self.height}"


class ContextEntry(_Model):
    """One QNN EP context model (``*_ctx.onnx`` + its ``*.bin``) compiled for one target."""

    component: Component
    precision: Precision
    width: int
    height: int
    path: str
    sha256: str
    binaries: list[str]
    source_graph_sha256: str
    embed_mode: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def key(self) -> str:
        """``unet/64x64`` style name."""
        return f"{self.component}/{self.width}x{self.height}"


class TargetEntry(_Model):
    """A Snapdragon target: SoC id, HTP arch, and the exact provider/session options of its binaries."""

    name: str
    soc_model: int
    htp_arch: int
    provider_options: dict[str, str]
    session_options: dict[str, str]
    contexts: list[ContextEntry]


class ScheduleEntry(_Model):
    """The sampler table for one working size and step count, float32 as hex words."""

    width: int
    height: int
    steps: int
    mu_f64: str | None
    sigmas_f32: list[str]
    timesteps_f32: list[str]

    def to_schedule(self) -> Schedule:
        """The :class:`~model_runtime.sampler.Schedule` (read-only arrays, bit-exact)."""
        sigmas = f32_from_hex(self.sigmas_f32)  # (N + 1,) float32
        timesteps = f32_from_hex(self.timesteps_f32)  # (N,) float32
        sigmas.setflags(write=False)
        timesteps.setflags(write=False)
        mu = None if self.mu_f64 is None else f64_from_hex(self.mu_f64)
        return Schedule(sigmas=sigmas, timesteps=timesteps, mu=mu)


class PipelineConstants(_Model):
    """``dreamlite.json``-equivalent constants (from ``ModelFolder.config``) plus the model's dimensions."""

    model_id: str
    variant: Literal["mobile", "base"]
    drop_idx: dict[str, int]
    default_size: list[int]
    edit_working_size: list[int]
    vlm_image_size: list[int]
    default_steps: int
    size_multiple: int
    min_size: int
    max_size: int
    guidance_scale: float
    image_guidance_scale: float
    latent_channels: int
    vae_scale: int
    text_dim: int
    image_token_id: int
    vae_scaling_factor: float
    vae_shift_factor: float
    source_config: dict[str, Any] = {}

    def folder_config(self) -> FolderConfig:
        """The runtime's :class:`~model_runtime.folder.FolderConfig`."""
        return FolderConfig(
            model_id=self.model_id,
            variant=self.variant,
            drop_idx_generate=self.drop_idx["generate"],
            drop_idx_edit=self.drop_idx["edit"],
            default_size=(self.default_size[0], self.default_size[1]),
            edit_working_size=(self.edit_working_size[0], self.edit_working_size[1]),
            vlm_image_size=(self.vlm_image_size[0], self.vlm_image_size[1]),
            default_steps=self.default_steps,
            size_multiple=self.size_multiple,
            min_size=self.min_size,
            max_size=self.max_size,
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
        )


class TextSpec(_Model):
    """How text features reach the UNet graph."""

    seq_len: int
    padding: str
    tokenizer: str
    tokenizer_sha256: str
    processor_config: str
    encoder: dict[str, Any]


class Manifest(_Model):
    """``manifest.json`` of a device bundle (see ``docs/bundle.md`` for every field)."""

    format: str
    model: dict[str, Any]
    pipeline: PipelineConstants
    text: TextSpec
    noise: dict[str, Any]
    scheduler_config: dict[str, Any]
    schedules: list[ScheduleEntry]
    graphs: list[GraphEntry]
    quantization: dict[str, Any] = {}
    qnn: dict[str, Any] = {}
    targets: list[TargetEntry] = []
    runtime: dict[str, Any]
    reference_session: dict[str, Any]
    parity: dict[str, Any] = {}
    files: dict[str, FileEntry]


def manifest_bytes(data: dict[str, Any]) -> bytes:
    """The exact bytes written as ``manifest.json``: sorted keys, 2-space indent, UTF-8, final newline."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def list_bundle_files(root: Path) -> list[str]:
    """Every file of a bundle except the manifest (relative POSIX paths, sorted, dot-files skipped)."""
    names = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME or rel.startswith(".") or "/." in rel:
            continue
        names.append(rel)
    return names


def write_manifest(root: Path, data: dict[str, Any]) -> str:
    """Hash every file under ``root``, add the ``files`` table, write ``manifest.json``.

    Args:
        root: The bundle folder, complete except for the manifest.
        data: Every manifest section except ``files``.

    Returns:
        The bundle id (SHA-256 of the manifest bytes).
    """
    files = {
        rel: {"sha256": hash_file(root / rel), "bytes": (root / rel).stat().st_size}
        for rel in list_bundle_files(root)
    }
    payload = dict(data, files=files)
    Manifest.model_validate(payload)  # never write a manifest this module cannot read back
    raw = manifest_bytes(payload)
    (root / MANIFEST_NAME).write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------------- the bundle
@dataclass
class Bundle:
    """A verified bundle: its root, parsed manifest and id."""

    root: Path
    manifest: Manifest
    bundle_id: str

    def path(self, rel: str) -> Path:
        """Absolute path of a bundle file."""
        return self.root / rel

    def precisions(self) -> list[str]:
        """Precisions with graphs in this bundle."""
        return [p for p in PRECISIONS if any(g.precision == p for g in self.manifest.graphs)]

    def sizes(self, precision: str) -> list[tuple[int, int]]:
        """Working sizes with a full UNet + VAE graph set at ``precision``."""
        found = {g.size for g in self.manifest.graphs if g.precision == precision and g.component == "unet"}
        return sorted(found)

    def graph(self, component: str, precision: str, size: tuple[int, int]) -> GraphEntry:
        """The graph entry, or a :class:`ModelLoadError` naming what is missing."""
        for g in self.manifest.graphs:
            if g.component == component and g.precision == precision and g.size == size:
                return g
        raise ModelLoadError(
            str(self.root / MANIFEST_NAME), f"no {precision} `{component}` graph for {size[0]}x{size[1]}"
        )

    def target(self, name: str) -> TargetEntry:
        """A QNN target by name (``sm8650``).

        Raises:
            InvalidInputError: The bundle has no binaries for it.
        """
        for t in self.manifest.targets:
            if t.name == name:
                return t
        raise InvalidInputError.one_of("target", [t.name for t in self.manifest.targets] or ["(none)"], name)

    def schedule(self, width: int, height: int, steps: int) -> Schedule:
        """The stored schedule table (never recomputed).

        Raises:
            InvalidInputError: No table for that size and step count.
        """
        for entry in self.manifest.schedules:
            if (entry.width, entry.height, entry.steps) == (width, height, steps):
                return entry.to_schedule()
        have = sorted({e.steps for e in self.manifest.schedules if (e.width, e.height) == (width, height)})
        raise InvalidInputError(
            "steps",
            f"has no schedule table in this bundle for {width}x{height}.",
            allowed=", ".join(str(s) for s in have) or "none",
            given=steps,
        )

    def model_spec(self) -> ModelSpec:
        """The :class:`~model_runtime.backends.base.ModelSpec` of the bundled model."""
        p = self.manifest.pipeline
        processor = json.loads(self.path(self.manifest.text.processor_config).read_text(encoding="utf-8"))
        return ModelSpec(
            config=p.folder_config(),
            processor_config=processor,
            tokenizer_file=self.path(self.manifest.text.tokenizer),
            image_token_id=p.image_token_id,
            latent_channels=p.latent_channels,
            vae_scale=p.vae_scale,
        )


def _read_manifest(root: Path) -> tuple[Manifest, str]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ModelLoadError(
            str(path), "missing manifest (not a dreamlite bundle; build one with `dreamlite export`)"
        )
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
        manifest = Manifest.model_validate(data)
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as err:
        raise ModelLoadError(str(path), f"not a valid bundle manifest: {err}") from err
    if manifest.format != BUNDLE_FORMAT:
        raise ModelLoadError(str(path), f"format {manifest.format!r} is not {BUNDLE_FORMAT!r}")
    return manifest, hashlib.sha256(raw).hexdigest()


def verify_files(root: Path, manifest: Manifest, only: Iterable[str] | None = None) -> None:
    """Check files against the manifest: present, same size, same SHA-256; no unlisted files.

    Args:
        root: Bundle folder.
        manifest: Its parsed manifest.
        only: Check just these relative paths (default: every file, and refuse unlisted ones).

    Raises:
        ModelLoadError: The first offending file, named, with what differs.
    """
    names = list(manifest.files) if only is None else list(only)
    for rel in names:
        entry = manifest.files.get(rel)
        path = root / rel
        if entry is None:
            raise ModelLoadError(str(path), "is not listed in the bundle manifest")
        if not path.is_file():
            raise ModelLoadError(str(path), "missing (listed in the bundle manifest)")
        size = path.stat().st_size
        if size != entry.bytes:
            raise ModelLoadError(
                str(path),
                f"sha256 mismatch: size {size} bytes, manifest says {entry.bytes} (file was modified)",
            )
        digest = hash_file(path)
        if digest != entry.sha256:
            raise ModelLoadError(
                str(path), f"sha256 mismatch: file has {digest}, manifest says {entry.sha256}"
            )
    if only is None:
        extra = sorted(set(list_bundle_files(root)) - set(manifest.files))
        if extra:
            raise ModelLoadError(
                str(root / extra[0]), "is not listed in the bundle manifest (unexpected file)"
            )


def open_bundle(path: str | Path, *, verify: bool = True, expected_id: str | None = None) -> Bundle:
    """Open a bundle and (by default) verify every file against its manifest.

    Args:
        path: Bundle folder (``manifest.json`` at its root).
        verify: Hash every listed file (a few seconds per GB) and refuse unlisted files.
        expected_id: The bundle id the caller pinned; the manifest's hash must equal it.

    Returns:
        The opened bundle.

    Raises:
        ModelLoadError: Missing/invalid manifest, id mismatch, or a file that does not match (named).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelLoadError(str(root), "bundle folder does not exist")
    manifest, bundle_id = _read_manifest(root)
    if expected_id is not None and expected_id != bundle_id:
        raise ModelLoadError(
            str(root / MANIFEST_NAME), f"sha256 mismatch: bundle id is {bundle_id}, expected {expected_id}"
        )
    if verify:
        verify_files(root, manifest)
    return Bundle(root=root, manifest=manifest, bundle_id=bundle_id)


# ---------------------------------------------------------------------------------------------- components
class GraphSession(Protocol):
    """What the components need from a session: ``onnxruntime.InferenceSession.run``."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        """Run the graph."""
        ...


SessionFactory = Callable[[str, tuple[int, int]], GraphSession]
"""``(component, (W, H)) → session``: how a backend opens the graph of one component and size."""


@dataclass
class SessionTable:
    """Sessions per (component, size), opened on first use (or all at once with :meth:`open_all`)."""

    factory: SessionFactory
    sizes: list[tuple[int, int]]
    _sessions: dict[tuple[str, tuple[int, int]], GraphSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, component: str, size: tuple[int, int]) -> GraphSession:
        """The session for ``component`` at ``size``.

        Raises:
            InvalidInputError: The size has no graphs in this bundle.
        """
        if size not in self.sizes:
            allowed = ", ".join(f"{w}x{h}" for w, h in self.sizes)
            raise InvalidInputError(
                "size", "is not compiled into this bundle.", allowed=allowed, given=f"{size[0]}x{size[1]}"
            )
        key = (component, size)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self.factory(component, size)
                self._sessions[key] = session
            return session

    def open_all(self, components: Iterable[str]) -> None:
        """Open every session now (fail fast at startup)."""
        for size in self.sizes:
            for component in components:
                self.get(component, size)

    def close(self) -> None:
        """Drop every session."""
        with self._lock:
            self._sessions.clear()


class GraphDenoiser:
    """The UNet graph (batch 1, static text length) behind the :class:`Denoiser` contract."""

    def __init__(self, sessions: SessionTable, vae_scale: int) -> None:
        self.sessions = sessions
        self.vae_scale = vae_scale

    def __call__(
        self,
        sample: NDArray[np.float32],
        timestep: NDArray[np.float32],
        text: NDArray[np.float32],
        text_mask: NDArray[np.int64],
        time_ids: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """Run each row through the batch-1 graph (see :class:`model_runtime.backends.base.Denoiser`)."""
        rows, _, h, w2 = sample.shape
        size = (w2 // 2 * self.vae_scale, h * self.vae_scale)
        session = self.sessions.get("unet", size)
        out = np.empty_like(sample, dtype=np.float32)  # (B, 4, h, 2w) float32
        for r in range(rows):
            feeds = {
                "sample": np.ascontiguousarray(sample[r : r + 1], dtype=np.float32),  # (1, 4, h, 2w)
                "timestep": np.ascontiguousarray(timestep[r : r + 1], dtype=np.float32),  # (1,)
                "encoder_hidden_states": np.ascontiguousarray(text[r : r + 1], dtype=np.float32),  # (1, L, D)
                "encoder_attention_mask": text_mask[r : r + 1].astype(np.float32),  # (1, L) float 1/0
                "time_ids": np.ascontiguousarray(time_ids[r : r + 1], dtype=np.float32),  # (1, 2)
            }
            out[r] = session.run(None, feeds)[0][0]  # (4, h, 2w) float32
        return out


class GraphVaeEncoder:
    """The VAE encoder graph behind the :class:`VaeEncoder` contract."""

    def __init__(self, sessions: SessionTable) -> None:
        self.sessions = sessions

    def __call__(self, images: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(B, 3, H, W)`` → ``(B, 4, H/8, W/8)``, one row at a time."""
        size = (int(images.shape[3]), int(images.shape[2]))
        session = self.sessions.get("vae_encoder", size)
        rows = [
            session.run(None, {"image": np.ascontiguousarray(images[r : r + 1], dtype=np.float32)})[0]
            for r in range(images.shape[0])
        ]
        return np.concatenate(rows).astype(np.float32, copy=False)  # (B, 4, h, w) float32


class GraphVaeDecoder:
    """The VAE decoder graph behind the :class:`VaeDecoder` contract."""

    def __init__(self, sessions: SessionTable, vae_scale: int) -> None:
        self.sessions = sessions
        self.vae_scale = vae_scale

    def __call__(self, latents: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(B, 4, h, w)`` → ``(B, 3, 8h, 8w)``, one row at a time."""
        size = (int(latents.shape[3]) * self.vae_scale, int(latents.shape[2]) * self.vae_scale)
        session = self.sessions.get("vae_decoder", size)
        rows = [
            session.run(None, {"latent": np.ascontiguousarray(latents[r : r + 1], dtype=np.float32)})[0]
            for r in range(latents.shape[0])
        ]
        return np.concatenate(rows).astype(np.float32, copy=False)  # (B, 3, H, W) float32


class HostTextEncoder:
    """Qwen3-VL pre-final-norm text features computed on the host (torch, float32, CPU).

    The bundle does not export Qwen3-VL (neither does the official Android export: the vision tower,
    deepstack and interleaved M-RoPE are QNN-unfriendly; a phone app runs it in an LLM runtime and feeds
    the UNet graph its last hidden states). The host runs the bundle's own copy of ``text_encoder/``
    (hash-checked like every other file), so onnx/qnn results depend only on the bundle.

    torch and the weights are loaded on the first call, so a caller that supplies cached features (a
    phone stand-in, a warm feature cache) never imports torch.
    """

    def __init__(self, model_dir: Path) -> None:
        if not (model_dir / "config.json").is_file():
            raise ModelLoadError(
                str(model_dir), "missing: this bundle was exported without its host text encoder"
            )
        self.model_dir = model_dir
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        try:
            import torch
            from transformers import Qwen3VLForConditionalGeneration
        except ImportError as err:  # pragma: no cover - both are core dependencies
            raise ModelLoadError(
                str(self.model_dir), f"the host text encoder needs torch and transformers: {err}"
            ) from err
        try:
            model: Any = Qwen3VLForConditionalGeneration.from_pretrained(self.model_dir, dtype=torch.float32)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise ModelLoadError(str(self.model_dir), f"cannot load the host text encoder: {err}") from err
        return model.eval().requires_grad_(False)

    def __call__(self, inputs: TextEncoderInput) -> NDArray[np.float32]:
        """``(T, D)`` float32 hidden states of the last decoder layer, taken before the final norm."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._encode(inputs)

    def _encode(self, inputs: TextEncoderInput) -> NDArray[np.float32]:
        import torch

        inner = self._model.model  # vision tower + language model, no LM head
        image_token_id = int(self._model.config.image_token_id)
        ids = torch.from_numpy(np.ascontiguousarray(inputs.input_ids))[None]  # (1, T) int64
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "use_cache": False,
        }
        if inputs.pixel_values is not None:
            kwargs["pixel_values"] = torch.from_numpy(np.ascontiguousarray(inputs.pixel_values))  # (P, K)
            kwargs["image_grid_thw"] = torch.from_numpy(np.asarray(inputs.image_grid_thw, dtype=np.int64))
            kwargs["mm_token_type_ids"] = (ids == image_token_id).to(torch.int32)  # M-RoPE needs it (tf 5.x)
        seen: list[Any] = []
        hook = inner.language_model.norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        with torch.inference_mode():
            try:
                inner.rope_deltas = None  # cached M-RoPE offsets must never leak between prompts
                inner(**kwargs)
            finally:
                hook.remove()
                inner.rope_deltas = None
        if len(seen) != 1:
            raise RuntimeError(f"expected one call of the final norm, saw {len(seen)}")
        out: NDArray[np.float32] = seen[0][0].to(torch.float32).numpy().copy()  # (T, D) float32
        return out


# ---------------------------------------------------------------------------------------------- text (ONNX)
TEXT_ENCODER_SESSION: dict[str, Any] = {
    "provider": "CPUExecutionProvider",
    "graph_optimization_level": "ORT_ENABLE_BASIC",
    "intra_op_num_threads": 1,
    "inter_op_num_threads": 1,
    "execution_mode": "ORT_SEQUENTIAL",
    "use_deterministic_compute": True,
}
"""Pinned session of the text-encoder graphs (the manifest carries the one parity was measured with)."""


def _text_session(path: Path, settings: dict[str, Any]) -> GraphSession:
    """A CPU-EP session with the pinned settings; load failures name the graph file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    level = str(settings.get("graph_optimization_level", "ORT_ENABLE_BASIC"))
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = int(settings.get("intra_op_num_threads", 1))
    options.inter_op_num_threads = int(settings.get("inter_op_num_threads", 1))
    options.execution_mode = getattr(ort.ExecutionMode, str(settings.get("execution_mode", "ORT_SEQUENTIAL")))
    options.use_deterministic_compute = bool(settings.get("use_deterministic_compute", True))
    options.log_severity_level = 3
    provider = str(settings.get("provider", "CPUExecutionProvider"))
    try:
        session: GraphSession = ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelLoadError(str(path), f"onnxruntime cannot load this text-encoder graph: {err}") from err
    return session


class OnnxTextEncoder:
    """Qwen3-VL pre-final-norm text features from the bundle's exported graphs (onnxruntime, CPU EP, fp32).

    The phone app's text runtime stand-in: numpy and onnxruntime only. One call pads the prompt's ids
    right to the graph's static length ``T`` (``attention_mask`` 0 on padding), computes the M-RoPE
    ``position_ids`` with :func:`model_runtime.text_positions.mrope_position_ids`, runs the vision graph
    for an edit prompt (the features of a generate prompt are zeros with an all-zero image mask), runs the
    text graph and returns the real tokens' rows. Sessions open on first use (``preload`` opens the text
    graph at once; the vision graph opens on the first edit).

    Args:
        text_path: ``text_encoder_onnx/text.fp32.onnx``.
        vision_path: ``text_encoder_onnx/vision.fp32.onnx``.
        layout: Static shapes and ids (``manifest.text.encoder``: ``max_tokens``, ``hidden``,
            ``pad_token_id``, ``image_token_id``, ``spatial_merge_size``, ``image_grid_thw``,
            ``pixel_values``, ``image_tokens``, ``deepstack_layers``).
        session: Pinned session settings (:data:`TEXT_ENCODER_SESSION`).
        preload: Open the text graph now.
    """

    def __init__(
        self,
        text_path: Path,
        vision_path: Path,
        layout: dict[str, Any],
        session: dict[str, Any] | None = None,
        *,
        preload: bool = False,
    ) -> None:
        self.text_path = text_path
        self.vision_path = vision_path
        self.max_tokens = int(layout["max_tokens"])
        self.hidden = int(layout["hidden"])
        self.pad_token_id = int(layout["pad_token_id"])
        self.image_token_id = int(layout["image_token_id"])
        self.merge = int(layout["spatial_merge_size"])
        self.grid = tuple(int(v) for v in layout["image_grid_thw"])
        self.pixel_shape = tuple(int(v) for v in layout["pixel_values"])
        self.image_tokens = int(layout["image_tokens"])
        self.deepstack_layers = int(layout["deepstack_layers"])
        self.session_settings = dict(session or TEXT_ENCODER_SESSION)
        self._text: GraphSession | None = None
        self._vision: GraphSession | None = None
        self._lock = threading.Lock()
        self._no_image = (
            np.zeros((self.image_tokens, self.hidden), dtype=np.float32),  # (N, D)
            np.zeros((self.deepstack_layers, self.image_tokens, self.hidden), dtype=np.float32),  # (S, N, D)
        )
        if preload:
            self._session("text")

    @classmethod
    def from_layout(
        cls, root: Path, text_rel: str, vision_rel: str, layout: dict[str, Any], session: dict[str, Any]
    ) -> OnnxTextEncoder:
        """An encoder over graphs under ``root`` (used by the exporter before the manifest exists)."""
        return cls(root / text_rel, root / vision_rel, layout, session)

    def _session(self, which: str) -> GraphSession:
        with self._lock:
            if which == "text":
                if self._text is None:
                    self._text = _text_session(self.text_path, self.session_settings)
                return self._text
            if self._vision is None:
                self._vision = _text_session(self.vision_path, self.session_settings)
            return self._vision

    def _image_features(self, inputs: TextEncoderInput) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        pixels = inputs.pixel_values
        assert pixels is not None
        grid = tuple(int(v) for v in np.asarray(inputs.image_grid_thw, dtype=np.int64).reshape(-1))
        if tuple(pixels.shape) != self.pixel_shape or grid != self.grid:
            raise InvalidInputError(
                "image",
                "VLM patches do not match this bundle's fixed VLM image size.",
                allowed=f"pixel_values {list(self.pixel_shape)}, image_grid_thw {list(self.grid)}",
                given=f"pixel_values {list(pixels.shape)}, image_grid_thw {list(grid)}",
            )
        feeds = {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)}  # (P, K) float32
        embeds, deepstack = self._session("vision").run(None, feeds)  # (N, D), (S, N, D) float32
        return np.asarray(embeds, dtype=np.float32), np.asarray(deepstack, dtype=np.float32)

    def __call__(self, inputs: TextEncoderInput) -> NDArray[np.float32]:
        """``(T, D)`` float32 hidden states of the last decoder layer, before the final norm (real tokens)."""
        from model_runtime.text_positions import mrope_position_ids, pad_right

        real = np.asarray(inputs.input_ids, dtype=np.int64).reshape(-1)  # (T,) int64
        ids, mask = pad_right(real, self.max_tokens, self.pad_token_id)  # (1, L), (1, L) int64
        if inputs.pixel_values is None:
            positions = mrope_position_ids(real, -1, None, self.merge, self.max_tokens)  # (3, 1, L): 0 … L−1
            image_mask = np.zeros((1, self.max_tokens), dtype=np.int64)  # (1, L)
            embeds, deepstack = self._no_image
        else:
            found = int((real == self.image_token_id).sum())
            if found != self.image_tokens:
                raise InvalidInputError(
                    "image",
                    "tokens in the prompt do not match this bundle's VLM image.",
                    allowed=f"{self.image_tokens} image tokens",
                    given=found,
                )
            grid = np.asarray([self.grid], dtype=np.int64)  # (1, 3)
            positions = mrope_position_ids(real, self.image_token_id, grid, self.merge, self.max_tokens)
            image_mask = (ids == self.image_token_id).astype(np.int64) * mask  # (1, L) int64
            embeds, deepstack = self._image_features(inputs)
        feeds = {
            "input_ids": ids,  # (1, L) int64
            "attention_mask": mask,  # (1, L) int64
            "position_ids": positions,  # (3, 1, L) int64
            "image_mask": image_mask,  # (1, L) int64
            "image_embeds": embeds,  # (N, D) float32
            "deepstack_embeds": deepstack,  # (S, N, D) float32
        }
        hidden = self._session("text").run(None, feeds)[0]  # (1, L, D) float32
        out: NDArray[np.float32] = np.ascontiguousarray(hidden[0, : real.shape[0]], dtype=np.float32)
        return out  # (T, D) float32

    def close(self) -> None:
        """Drop the sessions."""
        with self._lock:
            self._text = self._vision = None


def bundle_text_encoder(bundle: Bundle, *, preload: bool = False) -> tuple[Any, str, dict[str, Any]]:
    """The text encoder a bundle backend uses, its encoder id (prompt-cache key) and the facts to report.

    :class:`OnnxTextEncoder` when the manifest records exported graphs (``text.encoder.runtime == "onnx"``),
    else :class:`HostTextEncoder` over ``text_encoder/``.

    Returns:
        ``(encoder, encoder_id, details)``; ``details`` goes to ``BackendInfo.details["text_encoder"]``.
    """
    facts = dict(bundle.manifest.text.encoder)
    if facts.get("runtime") == "onnx":
        graphs = facts["graphs"]
        encoder = OnnxTextEncoder(
            bundle.path(graphs["text"]["path"]),
            bundle.path(graphs["vision"]["path"]),
            facts,
            facts.get("session"),
            preload=preload,
        )
        text_sha, vision_sha = graphs["text"]["sha256"], graphs["vision"]["sha256"]
        details = {
            "runtime": "onnx",
            "component": "OnnxTextEncoder",
            "provider": encoder.session_settings.get("provider", "CPUExecutionProvider"),
            "session_options": encoder.session_settings,
            "graph_sha256": {"text": text_sha, "vision": vision_sha},
            "max_tokens": encoder.max_tokens,
            "parity_max_abs": facts.get("parity", {}).get("max_abs"),
            "host_fallback": facts.get("host_fallback"),
        }
        return encoder, f"onnx:{text_sha[:16]}:{vision_sha[:16]}:float32", details
    te_sha = bundle.manifest.files.get("text_encoder/model.safetensors")
    encoder_id = f"host-torch:{te_sha.sha256[:16] if te_sha else bundle.bundle_id[:16]}:float32"
    return HostTextEncoder(bundle.path("text_encoder")), encoder_id, {**facts, "component": "HostTextEncoder"}
