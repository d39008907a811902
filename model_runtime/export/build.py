"""Export pipeline: DreamLite folder → device bundle, as ordered stages with one manifest at the end.

Stages (each module's docstring says what it does and why):

1. host files — tokenizer, processor config, scheduler config, DLN-1 golden vectors and the host text
   encoder copied into the bundle;
1b. text encoder ONNX — Qwen3-VL's vision tower and language model (to the pre-final-norm states) as two
   static graphs (:mod:`.text_encoder`; skipped with ``--no-text-encoder-onnx``);
2. ONNX fp32 per working size (:mod:`.onnx_export`), optional norm fusion for the float graphs (:mod:`.fuse`);
3. fp16 (:mod:`.fp16`);
4. calibration recorded from the torch pipeline (:mod:`.calibration`) → QDQ w8a16 (:mod:`.quantize`);
5. QNN EP context binaries per target, one process per target (:mod:`.qnn_worker`);
6. parity: every graph vs torch, then end-to-end runs through the bundle backends (:mod:`.parity`);
7. ``manifest.json`` (:mod:`model_runtime.bundle`), whose hash is the bundle id.

The bundle is built in ``<out>.partial`` and renamed when complete, so a failed export leaves no bundle.
Stage timings are returned (not written to the manifest, which stays a pure function of the inputs).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.bundle import BUNDLE_FORMAT, f32_hex, f64_hex, write_manifest
from model_runtime.errors import InvalidInputError, ModelLoadError
from model_runtime.export.config import QNN_TARGETS, ExportConfig
from model_runtime.folder import FolderConfig, ModelFolder, hash_file, open_model_folder
from model_runtime.sampler import compute_schedule

logger = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae_decoder", "vae_encoder")
TEXT_ENCODER_REASON = (
    "Qwen3-VL was not exported (--no-text-encoder-onnx), as in the official Android export. A phone app "
    "computes the features with its own LLM runtime; the server runs this bundle's text_encoder/ on torch "
    "(host component) and feeds the UNet graph."
)


@dataclass
class ExportResult:
    """What an export produced."""

    bundle: Path
    bundle_id: str
    timings: dict[str, float] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    sizes_bytes: dict[str, int] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        logger.info("export stage %s …", name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            logger.info("export stage %s done in %.1f s", name, self.timings[name])


def default_sizes(config: FolderConfig) -> list[tuple[int, int]]:
    """The model's generate size and edit working size (deduplicated)."""
    sizes = [config.default_size]
    if config.edit_working_size not in sizes:
        sizes.append(config.edit_working_size)
    return sizes


def _check_size(size: tuple[int, int], config: FolderConfig) -> None:
    for value in size:
        if value % config.size_multiple or not config.min_size <= value <= config.max_size:
            raise InvalidInputError(
                "--size",
                f"must use multiples of {config.size_multiple}.",
                allowed=f"{config.min_size} … {config.max_size}",
                given=f"{size[0]}x{size[1]}",
            )


def _size_dir(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_host_files(folder: ModelFolder, out: Path, config: ExportConfig) -> None:
    for sub in ("tokenizer", "processor"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for path in sorted((folder.root / sub).iterdir()):
            if path.is_file():
                shutil.copy2(path, out / sub / path.name)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copy2(
        folder.root / "scheduler" / "scheduler_config.json", out / "scheduler" / "scheduler_config.json"
    )
    golden = Path(__file__).resolve().parents[1] / "assets" / "dln1_golden.json"
    if golden.is_file():
        (out / "noise").mkdir(parents=True, exist_ok=True)
        shutil.copy2(golden, out / "noise" / "dln1_golden.json")
    if config.text_encoder == "copy":
        for path in sorted((folder.root / "text_encoder").iterdir()):
            if path.is_file():
                _link_or_copy(path, out / "text_encoder" / path.name)


def _graph_entry(
    out: Path, rel: str, component: str, precision: str, size: tuple[int, int], fusions: dict[str, int]
) -> dict[str, Any]:
    from model_runtime.export.onnx_export import graph_signature

    inputs, outputs, opset = graph_signature(out / rel)
    return {
        "component": component,
        "precision": precision,
        "width": size[0],
        "height": size[1],
        "path": rel,
        "sha256": hash_file(out / rel),
        "opset": opset,
        "inputs": inputs,
        "outputs": outputs,
        "fusions": fusions,
        "external_data": [],
    }


def qnn_parity_indices(total: int, wanted: int) -> list[int]:
    """``wanted`` evenly spread sample indices out of ``total`` (all when ``wanted`` is 0 or ≥ total).

    With 2 held-out runs × 4 steps and ``wanted=4`` this picks the 2nd and 4th step of each run.
    """
    if wanted <= 0 or wanted >= total:
        return list(range(total))
    return [(2 * i + 1) * total // (2 * wanted) for i in range(wanted)]


def _signature(entry: dict[str, Any]) -> dict[str, list[int]]:
    return {str(i["name"]): list(i["shape"]) for i in entry["inputs"]}


def _versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import torch
    import transformers

    import model_runtime

    return {
        "model_runtime": model_runtime.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _pipeline_constants(
    folder: ModelFolder, sizes: list[tuple[int, int]], text_dim: int, vae_scale: int
) -> dict[str, Any]:
    cfg = folder.config
    default = cfg.default_size if cfg.default_size in sizes else sizes[0]
    edit = cfg.edit_working_size if cfg.edit_working_size in sizes else sizes[0]
    source = asdict(cfg)
    return {
        "model_id": cfg.model_id,
        "variant": cfg.variant,
        "drop_idx": {"generate": cfg.drop_idx_generate, "edit": cfg.drop_idx_edit},
        "default_size": list(default),
        "edit_working_size": list(edit),
        "vlm_image_size": list(cfg.vlm_image_size),
        "default_steps": cfg.default_steps,
        "size_multiple": cfg.size_multiple,
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "guidance_scale": cfg.guidance_scale,
        "image_guidance_scale": cfg.image_guidance_scale,
        "latent_channels": int(folder.vae_config.get("latent_channels", 4)),
        "vae_scale": vae_scale,
        "text_dim": text_dim,
        "image_token_id": folder.image_token_id,
        "vae_scaling_factor": float(folder.vae_config.get("scaling_factor", 1.0)),
        "vae_shift_factor": float(folder.vae_config.get("shift_factor", 0.0)),
        "source_config": {k: list(v) if isinstance(v, tuple) else v for k, v in source.items()},
    }


def _source_hashes(folder: ModelFolder) -> dict[str, Any]:
    files = {}
    for sub in ("unet", "vae", "text_encoder", "scheduler", "tokenizer", "processor"):
        for path in sorted((folder.root / sub).iterdir()):
            if path.is_file():
                files[f"{sub}/{path.name}"] = hash_file(path)
    return {"folder": folder.root.resolve().name, "folder_sha256": folder.weights_sha256(), "files": files}


def _schedules(folder: ModelFolder, sizes: list[tuple[int, int]], steps: list[int]) -> list[dict[str, Any]]:
    out = []
    for w, h in sizes:
        for n in steps:
            s = compute_schedule(folder.scheduler_config, w, h, n)
            out.append(
                {
                    "width": w,
                    "height": h,
                    "steps": n,
                    "mu_f64": None if s.mu is None else f64_hex(float(s.mu)),
                    "sigmas_f32": f32_hex(s.sigmas),
                    "timesteps_f32": f32_hex(s.timesteps),
                }
            )
    return out


def _torch_decoder(torch_backend: Any) -> Any:
    return torch_backend.vae_decoder


class _Exporter:
    """One export run (state shared by the stages)."""

    def __init__(
        self,
        folder: ModelFolder,
        out: Path,
        work: Path,
        config: ExportConfig,
        sizes: list[tuple[int, int]],
        steps: list[int],
    ) -> None:
        self.folder = folder
        self.out = out
        self.work = work
        self.config = config
        self.sizes = sizes
        self.steps = steps
        self.clock = _Clock()
        self.graphs: list[dict[str, Any]] = []
        self.unfused: dict[tuple[str, tuple[int, int]], Path] = {}
        self.quant_info: dict[str, Any] = {}
        self.fp16_info: dict[str, Any] = {}
        self.targets: list[dict[str, Any]] = []
        self.parity: dict[str, Any] = {"graphs": {}, "e2e": {}}
        self.qnn_timings: dict[str, Any] = {}
        self.text_encoder: dict[str, Any] | None = None

    # ---------------------------------------------------------------- 1b. text encoder ONNX
    def export_text_encoder(self) -> None:
        from model_runtime.export.text_encoder import export_text_encoder

        cfg = self.folder.config
        max_tokens = self.config.text_max_tokens or self.config.seq_len + max(
            cfg.drop_idx_generate, cfg.drop_idx_edit
        )
        host = "text_encoder" if self.config.text_encoder == "copy" else None
        result = export_text_encoder(self.folder, self.out, max_tokens, self.config.opset, host)
        self.text_encoder = result.manifest

    # ---------------------------------------------------------------- 2. fp32 (+ fusion)
    def export_fp32(self, models: Any) -> None:
        import onnx

        from model_runtime.export.fuse import fuse_norms
        from model_runtime.export.onnx_export import export_unet, export_vae_decoder, export_vae_encoder

        for size in self.sizes:
            tag = _size_dir(size)
            for component in COMPONENTS:
                raw = self.work / tag / f"{component}.fp32.onnx"
                if component == "unet":
                    export_unet(models, size, self.config.seq_len, raw, self.config.opset)
                elif component == "vae_decoder":
                    export_vae_decoder(models, size, raw, self.config.opset)
                else:
                    export_vae_encoder(models, size, raw, self.config.opset)
                self.unfused[(component, size)] = raw
                rel = f"graphs/{tag}/{component}.fp32.onnx"
                (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
                fusions: dict[str, int] = {}
                if self.config.fuse:
                    fused, report = fuse_norms(onnx.load(str(raw)), self.config.fuse)
                    if report.rmsnorm or report.groupnorm:
                        onnx.save(fused, str(self.out / rel))
                        fusions = report.as_dict()
                if not fusions:
                    shutil.copy2(raw, self.out / rel)
                self.graphs.append(_graph_entry(self.out, rel, component, "fp32", size, fusions))

    # ---------------------------------------------------------------- 3. fp16
    def export_fp16(self) -> None:
        from model_runtime.export.fp16 import convert_fp16

        for entry in [g for g in self.graphs if g["precision"] == "fp32"]:
            size = (entry["width"], entry["height"])
            rel = f"graphs/{_size_dir(size)}/{entry['component']}.fp16.onnx"
            info = convert_fp16(self.out / entry["path"], self.out / rel)
            self.fp16_info[f"{entry['component']}/{_size_dir(size)}"] = info
            self.graphs.append(
                _graph_entry(self.out, rel, entry["component"], "fp16", size, entry["fusions"])
            )

    # ---------------------------------------------------------------- 4. w8a16
    def export_w8a16(self, calibration: Any) -> None:
        from model_runtime.export.quantize import quantize_w8a16

        for entry in [g for g in self.graphs if g["precision"] == "fp32"]:
            size = (entry["width"], entry["height"])
            component = entry["component"]
            feeds = calibration.for_graph(component, size, _signature(entry))
            if not feeds:
                raise ModelLoadError(
                    str(self.config.calibration_dir or "calibration"),
                    f"no calibration inputs match the {component} graph at {_size_dir(size)}",
                )
            rel = f"graphs/{_size_dir(size)}/{component}.w8a16.onnx"
            info = quantize_w8a16(self.unfused[(component, size)], self.out / rel, feeds, self.config.quant)
            self.quant_info[f"{component}/{_size_dir(size)}"] = info
            self.graphs.append(_graph_entry(self.out, rel, component, "w8a16", size, {}))

    # ---------------------------------------------------------------- 5. QNN contexts (+ emulator parity)
    def compile_targets(
        self, parity_feeds: dict[tuple[str, tuple[int, int]], list[Any]]
    ) -> dict[str, dict[str, list[NDArray[np.float32]]]]:
        from model_runtime.backends.qnn_backend import SESSION_CONFIG, provider_options
        from model_runtime.export.onnx_export import graph_signature
        from model_runtime.export.qnn_worker import run_job, save_feeds

        emulator_outputs: dict[str, dict[str, list[NDArray[np.float32]]]] = {}
        for name in self.config.targets:
            target = QNN_TARGETS[name]
            options = provider_options(target.soc_model, target.htp_arch, {"vtcm_mb": str(target.vtcm_mb)})
            jobs = []
            # A context's precision and the graph it is compiled from: w8a16 from the QDQ graph, fp16 from
            # the fp32 graph (the HTP runs float graphs in fp16: enable_htp_fp16_precision=1).
            sources = [(q, "w8a16" if q == "w8a16" else "fp32") for q in self.config.qnn_precisions]
            for qnn_precision, source in sources:
                for entry in [g for g in self.graphs if g["precision"] == source]:
                    size = (entry["width"], entry["height"])
                    key = f"{entry['component']}/{_size_dir(size)}"
                    ctx = f"{entry['component']}.{qnn_precision}_ctx.onnx"
                    dst = self.out / "qnn" / name / _size_dir(size) / ctx
                    item: dict[str, Any] = {"src": str(self.out / entry["path"]), "dst": str(dst), "key": key}
                    feeds = parity_feeds.get((entry["component"], size), []) if self.config.parity_qnn else []
                    # The emulator is slow (≈3.5 min per real-UNet run): score a spread-out subset of samples.
                    feeds = [feeds[i] for i in qnn_parity_indices(len(feeds), self.config.qnn_parity_samples)]
                    if feeds and self.config.parity != "none":
                        stem = f"parity-{name}-{qnn_precision}-{entry['component']}-{_size_dir(size)}"
                        feeds_path = self.work / f"{stem}.npz"
                        save_feeds(feeds_path, feeds)
                        item["feeds"] = str(feeds_path)
                        item["out"] = str(feeds_path.with_suffix(".out.npz"))
                    jobs.append((entry, qnn_precision, item))
            result = run_job(
                {
                    "kind": "compile",
                    "target": name,
                    "provider_options": options,
                    "contexts": [i for _, _, i in jobs],
                },
                self.work,
            )
            contexts = []
            outputs: dict[str, dict[str, list[NDArray[np.float32]]]] = {}  # precision -> graph key -> outs
            for (entry, qnn_precision, item), res in zip(jobs, result["contexts"], strict=True):
                dst = Path(item["dst"])
                rel = dst.relative_to(self.out).as_posix()
                inputs, outs, _ = graph_signature(dst)
                contexts.append(
                    {
                        "component": entry["component"],
                        "precision": qnn_precision,
                        "width": entry["width"],
                        "height": entry["height"],
                        "path": rel,
                        "sha256": hash_file(dst),
                        "binaries": [
                            (dst.parent / b).relative_to(self.out).as_posix() for b in res["binaries"]
                        ],
                        "source_graph_sha256": entry["sha256"],
                        "embed_mode": 0,
                        "inputs": inputs,
                        "outputs": outs,
                    }
                )
                self.qnn_timings[f"{_qnn_tag(name, qnn_precision)}:{item['key']}"] = {
                    k: res[k] for k in ("compile_s", "load_s", "run_s", "single_run_s", "emulator_runs")
                }
                if "out" in item:
                    with np.load(item["out"]) as data:
                        emulated = [np.asarray(data[f"arr_{i}"]) for i in range(len(data.files))]
                    outputs.setdefault(qnn_precision, {})[item["key"]] = emulated
            for qnn_precision, per_graph in outputs.items():  # parity reports: qnn:<target>[/<precision>]
                emulator_outputs[_qnn_tag(name, qnn_precision)] = per_graph
            self.targets.append(
                {
                    "name": name,
                    "soc_model": target.soc_model,
                    "htp_arch": target.htp_arch,
                    "provider_options": options,
                    "session_options": dict(SESSION_CONFIG),
                    "contexts": contexts,
                }
            )
        return emulator_outputs

    # ---------------------------------------------------------------- 6. graph parity (CPU EP)
    def graph_parity(
        self, recording: Any, decode: Any, emulator: dict[str, dict[str, list[NDArray[np.float32]]]]
    ) -> None:
        from model_runtime.backends.onnx_backend import CPU_EP, REFERENCE_SESSION, open_session
        from model_runtime.export.parity import graph_parity, reference_images, run_graph

        images = {
            key: reference_images(key[0], feeds, recording.outputs[key], decode)
            for key, feeds in recording.inputs.items()
        }
        for entry in self.graphs:
            size = (entry["width"], entry["height"])
            key = (entry["component"], size)
            feeds = recording.inputs.get(key, [])
            if not feeds:
                continue
            session = open_session(self.out / entry["path"], [CPU_EP], REFERENCE_SESSION)
            outputs = run_graph(session, feeds)
            report = graph_parity(
                entry["component"], feeds, outputs, recording.outputs[key], decode, images[key]
            )
            self.parity["graphs"].setdefault(entry["precision"], {})[
                f"{entry['component']}/{_size_dir(size)}"
            ] = report
        for name, per_graph in emulator.items():
            for graph_key, outs in per_graph.items():
                component, tag = graph_key.split("/")
                w, h = (int(v) for v in tag.split("x"))
                key = (component, (w, h))
                idx = qnn_parity_indices(len(recording.inputs[key]), self.config.qnn_parity_samples)
                report = graph_parity(
                    component,
                    [recording.inputs[key][i] for i in idx],
                    outs,
                    [recording.outputs[key][i] for i in idx],
                    decode,
                    [images[key][i] for i in idx],
                )
                self.parity["graphs"].setdefault(f"qnn:{name}", {})[graph_key] = report

    # ---------------------------------------------------------------- manifest
    def manifest(self, calibration: Any) -> dict[str, Any]:
        from model_runtime.backends.onnx_backend import REFERENCE_SESSION
        from model_runtime.tokenization import PromptTokenizer

        folder = self.folder
        unet_entry = next(g for g in self.graphs if g["component"] == "unet")
        text_dim = int(
            next(i for i in unet_entry["inputs"] if i["name"] == "encoder_hidden_states")["shape"][2]
        )
        vae_scale = 2 ** (len(folder.vae_config.get("encoder_block_out_channels", [64] * 4)) - 1)
        tokenizer = PromptTokenizer(folder.tokenizer_file)
        golden = self.out / "noise" / "dln1_golden.json"
        data: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "model": {
                "model_id": folder.config.model_id,
                "variant": folder.config.variant,
                "source": _source_hashes(folder),
            },
            "pipeline": _pipeline_constants(folder, self.sizes, text_dim, vae_scale),
            "text": {
                "seq_len": self.config.seq_len,
                "padding": "right: zero features, encoder_attention_mask 0 (float 1 = token, 0 = padding)",
                "tokenizer": "tokenizer/tokenizer.json",
                "tokenizer_sha256": tokenizer.sha256,
                "processor_config": "processor/preprocessor_config.json",
                "encoder": self.text_encoder
                or {
                    "exported": False,
                    "runtime": "host",
                    "framework": "torch + transformers (Qwen3VLForConditionalGeneration), float32, CPU",
                    "path": "text_encoder" if self.config.text_encoder == "copy" else None,
                    "features": "last decoder layer output before the final RMSNorm, (T, D) float32; the "
                    "pipeline drops drop_idx tokens and right-pads to seq_len",
                    "reason": TEXT_ENCODER_REASON,
                },
            },
            "noise": {
                "spec": "dln1",
                "golden_vectors": "noise/dln1_golden.json" if golden.is_file() else None,
                "golden_sha256": hash_file(golden) if golden.is_file() else None,
                "latent": "per sample (1, C, H/8, W/8), stream 0, float32",
                "also_supported": ["torch-cpu"],
            },
            "scheduler_config": folder.scheduler_config,
            "schedules": _schedules(folder, self.sizes, self.steps),
            "graphs": self.graphs,
            "quantization": {
                "w8a16": {
                    "tool": "onnxruntime.quantization (qnn_preprocess_model, get_qnn_qdq_config, quantize)",
                    "settings": self.config.quant.as_dict(),
                    "source_graph": "decomposed fp32 (no norm fusion)",
                    "graphs": self.quant_info,
                    "calibration": {
                        **calibration.source,
                        "counts": calibration.counts(),
                        "sha256": calibration.sha256(),
                    },
                }
                if self.quant_info
                else {},
                "fp16": {"graphs": self.fp16_info} if self.fp16_info else {},
                "fusion": {"requested": list(self.config.fuse), "applies_to": ["fp32", "fp16"]},
            },
            "qnn": {},
            "targets": self.targets,
            "runtime": _versions(),
            "reference_session": dict(REFERENCE_SESSION),
            "parity": self.parity,
        }
        if self.targets:
            from model_runtime.backends.qnn_backend import qnn_library_hashes, qnn_versions

            data["qnn"] = {
                "versions": qnn_versions(),
                "libraries_sha256": qnn_library_hashes(),
                "backend": "htp",
                "embed_mode": 0,
                "note": "binaries compiled on x86_64 with the onnxruntime-qnn wheel; the phone must load "
                "them with the same QAIRT version",
            }
        return data


def _e2e(exporter: _Exporter, reference: dict[tuple[int, int], Any], steps: int) -> None:
    """End-to-end parity of every bundle backend against the torch runs recorded earlier."""
    from model_runtime.backends.onnx_backend import load_onnx_backend
    from model_runtime.cache import LRUFeatureCache
    from model_runtime.export.parity import e2e_parity, run_e2e
    from model_runtime.export.qnn_worker import run_job
    from model_runtime.pipeline import Pipeline

    # One feature cache across precisions: the host text encoder (same weights, same encoder id) runs
    # once per prompt instead of once per precision.
    features = LRUFeatureCache(64)
    for precision in exporter.config.precisions:
        backend = load_onnx_backend(exporter.out, precision=precision, verify=False)
        pipeline = Pipeline(backend, feature_cache=features)
        exporter.parity["e2e"][precision] = {
            _size_dir(size): e2e_parity(run_e2e(pipeline, size, steps), reference[size])
            for size in exporter.sizes
        }
        backend.close()
    if not exporter.config.parity_qnn:
        return
    for name in exporter.config.targets:
        for qnn_precision in exporter.config.qnn_precisions:
            tag = _qnn_tag(name, qnn_precision)
            out = exporter.work / f"e2e-{name}-{qnn_precision}.npz"
            result = run_job(
                {
                    "kind": "pipeline",
                    "target": name,
                    "precision": qnn_precision,
                    "bundle": str(exporter.out),
                    "sizes": exporter.sizes,
                    "steps": steps,
                    "out": str(out),
                },
                exporter.work,
            )
            exporter.qnn_timings[f"{tag}:e2e"] = result
            with np.load(out) as data:
                got: dict[tuple[int, int], dict[str, dict[str, NDArray[Any]]]] = {}
                for key in data.files:
                    size_tag, task, what = key.split("/")
                    w, h = (int(v) for v in size_tag.split("x"))
                    got.setdefault((w, h), {}).setdefault(task, {})[what] = np.asarray(data[key])
            exporter.parity["e2e"][f"qnn:{tag}"] = {
                _size_dir(size): e2e_parity(got[size], reference[size]) for size in exporter.sizes
            }


def _qnn_tag(target: str, precision: str) -> str:
    """How reports name a target's contexts: ``<target>`` (w8a16, the default) or ``<target>/<precision>``."""
    return target if precision == "w8a16" else f"{target}/{precision}"


def export_bundle(
    model_dir: str | Path,
    out: str | Path,
    config: ExportConfig,
    *,
    force: bool = False,
    calibration_out: Path | None = None,
) -> ExportResult:
    """Build a device bundle from a DreamLite folder.

    Args:
        model_dir: Folder in the official layout.
        out: Bundle folder to create.
        config: What to build.
        force: Replace an existing ``out``.
        calibration_out: Also write the calibration tensors to this folder (reusable with ``--calibration``).

    Returns:
        The bundle path, id, stage timings and parity summary.

    Raises:
        InvalidInputError: A bad option (named).
        ModelLoadError: The folder or a calibration folder cannot be used (file named).
    """
    import torch

    config = config.validate()
    folder = open_model_folder(model_dir)
    sizes = [tuple(s) for s in config.sizes] or default_sizes(folder.config)
    for size in sizes:
        _check_size(size, folder.config)  # type: ignore[arg-type]
    steps = sorted(set(config.steps) | {folder.config.default_steps})
    out_path = Path(out).expanduser()
    if out_path.exists() and any(out_path.iterdir()) and not force:
        raise InvalidInputError(
            "--out", "exists and is not empty (use --force to replace it).", given=str(out_path)
        )
    partial = out_path.with_name(out_path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        result = _run_stages(folder, partial, config, sizes, steps, calibration_out)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(saved_threads)
    if out_path.exists():
        shutil.rmtree(out_path)
    partial.rename(out_path)
    result.bundle = out_path
    return result


def _run_stages(
    folder: ModelFolder,
    partial: Path,
    config: ExportConfig,
    sizes: list[tuple[int, int]],
    steps: list[int],
    calibration_out: Path | None,
) -> ExportResult:
    """Every stage, writing into ``partial`` (see :func:`export_bundle`)."""
    from model_runtime.backends import create_backend
    from model_runtime.export.calibration import build_calibration, parity_recording
    from model_runtime.export.graphs import torch_models
    from model_runtime.export.parity import run_e2e
    from model_runtime.pipeline import Pipeline

    default_steps = folder.config.default_steps
    with tempfile.TemporaryDirectory(prefix="dreamlite-export-") as tmp:
        ex = _Exporter(folder, partial, Path(tmp), config, sizes, steps)
        clock = ex.clock
        with clock.stage("host_files"):
            _copy_host_files(folder, partial, config)
        if config.text_encoder_onnx:
            with clock.stage("text_encoder_onnx"):
                ex.export_text_encoder()
            gc.collect()
        # Everything the torch pipeline must compute (calibration, parity references) happens first; then
        # the text encoder (8 GB in float32 for the real model) is released before the memory-hungry
        # export and quantization stages, whose graphs are traced from the same UNet/VAE modules.
        with clock.stage("load_torch"):
            torch_backend: Any = create_backend("torch", folder.root, dtype="float32")
        calibration = None
        if "w8a16" in config.precisions:
            with clock.stage("calibration"):
                calibration = build_calibration(
                    torch_backend,
                    ex.sizes,
                    config.seq_len,
                    default_steps,
                    config.calibration_prompts,
                    config.calibration_dir,
                )
            if calibration_out is not None:
                calibration.save(calibration_out)
        recording = None
        reference: dict[tuple[int, int], Any] = {}
        if config.parity != "none":
            with clock.stage("parity_inputs"):
                recording = parity_recording(torch_backend, ex.sizes, config.seq_len, default_steps)
                if config.parity == "full":
                    torch_pipeline = Pipeline(torch_backend)
                    reference = {size: run_e2e(torch_pipeline, size, default_steps) for size in ex.sizes}
                    del torch_pipeline
        decode = torch_backend.vae_decoder  # keeps only the VAE alive
        models = torch_models(torch_backend.unet, torch_backend.vae)
        del torch_backend
        gc.collect()
        with clock.stage("onnx_fp32"):
            ex.export_fp32(models)
        del models
        gc.collect()
        if "fp16" in config.precisions:
            with clock.stage("fp16"):
                ex.export_fp16()
        if calibration is not None:
            with clock.stage("quantize_w8a16"):
                ex.export_w8a16(calibration)
        if config.targets:
            with clock.stage("qnn_contexts"):
                feeds = recording.inputs if recording is not None else {}
                emulator = ex.compile_targets(feeds)
        else:
            emulator = {}
        if recording is not None:
            with clock.stage("parity_graphs"):
                ex.graph_parity(recording, decode, emulator)
        empty_calibration = _EmptyCalibration()
        bundle_id = write_manifest(partial, ex.manifest(calibration or empty_calibration))
        if config.parity == "full":
            with clock.stage("parity_e2e"):
                _e2e(ex, reference, default_steps)
            bundle_id = write_manifest(partial, ex.manifest(calibration or empty_calibration))
        if config.parity != "none" and config.parity_qnn and config.targets and config.parity_calibration > 0:
            from model_runtime.parity.calibrate import calibrate, write_tolerances

            with clock.stage("parity_calibration"):
                record = calibrate(
                    partial,
                    target=config.targets[0],
                    size=ex.sizes[0],
                    steps=default_steps,
                    count=config.parity_calibration,
                )
                bundle_id = write_tolerances(partial, record)
                ex.parity["tolerances"] = record["tolerances"]
        sizes_bytes = {
            rel.relative_to(partial).as_posix(): rel.stat().st_size
            for rel in sorted(partial.rglob("*"))
            if rel.is_file()
        }
    timings = dict(clock.timings)
    timings.update({f"qnn:{k}": v for k, v in _flatten_timings(ex.qnn_timings).items()})
    return ExportResult(
        bundle=partial, bundle_id=bundle_id, timings=timings, parity=ex.parity, sizes_bytes=sizes_bytes
    )


def _flatten_timings(data: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int | float):
                    flat[f"{key}:{sub}"] = float(v)
                elif isinstance(v, list) and v:
                    flat[f"{key}:{sub}_median"] = float(np.median(v))
                elif isinstance(v, dict):
                    for k2, v2 in v.items():
                        flat[f"{key}:{sub}:{k2}"] = float(v2)
    return flat


class _EmptyCalibration:
    """Stands in for the calibration set when no w8a16 graph is built."""

    def __init__(self) -> None:
        self.source: dict[str, Any] = {}

    def counts(self) -> dict[str, int]:
        return {}

    def sha256(self) -> str:
        return hashlib.sha256(b"").hexdigest()
