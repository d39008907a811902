"""Export stage ① (trace → ONNX fp32): static-shape, batch-1 graphs at opset 17, as the official export.

Each graph is traced with ``torch.onnx.export`` (TorchScript exporter, ``do_constant_folding``, no dynamic
axes), then passed once through ONNX Runtime's *basic* offline optimiser, which folds the shape arithmetic
the tracer leaves behind (``Shape``/``ConstantOfShape``/``Expand`` feeding ``Tile``) into constants, so the
K/V materialisation is a plain ``Tile`` with constant repeats. Basic-level rewrites only emit standard
ONNX ops (checked). The result passes ``onnx.checker``.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from model_runtime.export.graphs import (
    UNET_INPUTS,
    UNET_OUTPUTS,
    VAE_DECODER_INPUTS,
    VAE_DECODER_OUTPUTS,
    VAE_ENCODER_INPUTS,
    VAE_ENCODER_OUTPUTS,
    TorchModels,
    UNetGraph,
    VaeDecoderGraph,
    VaeEncoderGraph,
)

logger = logging.getLogger(__name__)

STANDARD_DOMAINS = {"", "ai.onnx"}


def unet_example(models: TorchModels, size: tuple[int, int], seq_len: int) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs with the UNet graph's static shapes."""
    width, height = size
    h, w = height // models.vae_scale, width // models.vae_scale
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, models.latent_channels, h, 2 * w, generator=gen)  # (1, 4, h, 2w)
    timestep = torch.tensor([500.0])  # (1,)
    text = torch.randn(1, seq_len, models.text_dim, generator=gen)  # (1, SEQ, D)
    mask = torch.ones(1, seq_len)  # (1, SEQ) float 1/0
    time_ids = torch.tensor([[float(width), float(height)]])  # (1, 2) = [W, H]
    return sample, timestep, text, mask, time_ids


EXTERNAL_DATA_BYTES = 1_800_000_000
"""Graphs whose weights exceed this are saved with one external-data file (protobuf's 2 GB limit)."""


def export_graph(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    opset: int,
) -> None:
    """Trace ``module`` to ``path``: ORT basic optimisation, or external weight data past the 2 GB limit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Trace outside the bundle: the exporter may write side files (external tensors) next to its output.
    with tempfile.TemporaryDirectory(prefix="dreamlite-export-") as tmp:
        raw = Path(tmp) / path.name
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter(
                "ignore"
            )  # tracer warnings about Python values on static shapes are expected
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=list(inputs),
                output_names=list(outputs),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        weights = sum(p.numel() * p.element_size() for p in module.parameters())
        if weights > EXTERNAL_DATA_BYTES:  # pragma: no cover - the real 2B text encoder only (untested here)
            onnx.save(
                onnx.load(str(raw)), str(path), save_as_external_data=True, location=path.name + ".data"
            )
        else:
            optimize_basic(raw, path)
    onnx.checker.check_model(str(path))


def optimize_basic(src: Path, dst: Path) -> None:
    """Run ORT's basic (level 1) optimiser offline and save the result (standard ONNX ops only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst), load_external_data=False)
    odd = sorted({n.domain for n in model.graph.node} - STANDARD_DOMAINS)
    if odd:
        raise RuntimeError(f"basic optimisation of {src} introduced non-standard op domains {odd}")


def export_unet(
    models: TorchModels, size: tuple[int, int], seq_len: int, path: Path, opset: int = 17
) -> None:
    """Trace the UNet at one working size (in-context width 2·W/8) and text length."""
    export_graph(
        UNetGraph(models.unet), unet_example(models, size, seq_len), path, UNET_INPUTS, UNET_OUTPUTS, opset
    )


def export_vae_decoder(models: TorchModels, size: tuple[int, int], path: Path, opset: int = 17) -> None:
    """Trace the VAE decoder: ``latent (1, 4, H/8, W/8)`` → ``image (1, 3, H, W)``."""
    width, height = size
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(
        1, models.latent_channels, height // models.vae_scale, width // models.vae_scale, generator=gen
    )
    export_graph(VaeDecoderGraph(models.vae), (latent,), path, VAE_DECODER_INPUTS, VAE_DECODER_OUTPUTS, opset)


def export_vae_encoder(models: TorchModels, size: tuple[int, int], path: Path, opset: int = 17) -> None:
    """Trace the VAE encoder: ``image (1, 3, H, W)`` in [−1, 1] → ``latent (1, 4, H/8, W/8)``."""
    width, height = size
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, height, width, generator=gen) * 2 - 1  # (1, 3, H, W) in [−1, 1]
    export_graph(VaeEncoderGraph(models.vae), (image,), path, VAE_ENCODER_INPUTS, VAE_ENCODER_OUTPUTS, opset)


_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT16: "uint16",
}


def graph_signature(path: Path) -> tuple[list[dict[str, object]], list[dict[str, object]], int]:
    """Inputs, outputs (name, static shape, dtype) and default-domain opset of a saved graph."""
    model = onnx.load(str(path), load_external_data=False)

    def spec(values: object) -> list[dict[str, object]]:
        out = []
        for v in values:  # type: ignore[attr-defined]
            tt = v.type.tensor_type
            shape = [int(d.dim_value) for d in tt.shape.dim]
            out.append(
                {"name": v.name, "shape": shape, "dtype": _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type))}
            )
        return out

    opset = next(o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS)
    return spec(model.graph.input), spec(model.graph.output), int(opset)
