"""Export configuration: what ``dreamlite export`` builds (sizes, precisions, targets, quantization).

Values here are serialised into the bundle manifest, so a bundle states exactly how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model_runtime.errors import InvalidInputError
from model_runtime.export.fuse import QDQ_GROUPNORM_FORMS


@dataclass(frozen=True, slots=True)
class QnnTarget:
    """A Snapdragon SoC as QNN names it (``soc_model``) with its HTP architecture."""

    name: str
    soc_model: int
    htp_arch: int
    vtcm_mb: int
    marketing: str


# Qualcomm's SoC table (QAIRT soc ids; see docs/parity.md §2.3).
QNN_TARGETS: dict[str, QnnTarget] = {
    "sm8550": QnnTarget("sm8550", 43, 73, 8, "Snapdragon 8 Gen 2"),
    "sm8650": QnnTarget("sm8650", 57, 75, 8, "Snapdragon 8 Gen 3 (Xiaomi 14)"),
    "sm8750": QnnTarget("sm8750", 69, 79, 8, "Snapdragon 8 Elite"),
}

PRECISION_NAMES = ("fp32", "fp16", "w8a16")
QNN_PRECISIONS = ("w8a16", "fp16")
"""QNN context precisions: ``w8a16`` is compiled from the QDQ graph; ``fp16`` from the fp32 graph, which the
HTP runs in float16 (``enable_htp_fp16_precision=1``)."""


@dataclass(frozen=True, slots=True)
class QuantSettings:
    """w8a16 QDQ settings passed to ``onnxruntime.quantization`` (``get_qnn_qdq_config``).

    Attributes:
        activation_type: ``QUInt16`` (a16).
        weight_type: ``QUInt8`` (w8).
        per_channel: Per-output-channel weight scales for Conv/Gemm/MatMul weights.
        calibrate_method: ``MinMax``.
        fuse_layernorm: Let ``qnn_preprocess_model`` fuse decomposed LayerNorms (and Erf→Gelu).
        groupnorm: How the quantized graph writes GroupNorm: ``reductions`` (reshape-free, default) or
            ``reshape`` (the exporter's Reshape → InstanceNormalization → Reshape form, which the QNN HTP
            compiler miscomputed inside the nano UNet; ``fuse.groupnorm_as_reductions``).
    """

    activation_type: str = "QUInt16"
    weight_type: str = "QUInt8"
    per_channel: bool = False
    calibrate_method: str = "MinMax"
    fuse_layernorm: bool = True
    groupnorm: str = "reductions"

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the manifest."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """Everything one ``dreamlite export`` run does.

    Attributes:
        sizes: Working sizes (W, H) to compile; default: the model's generate and edit sizes.
        seq_len: Static text length of the UNet graph (official 128).
        precisions: Graph precisions (``fp32`` always, it is the source of the others).
        targets: QNN targets to compile context binaries for (empty: no binaries).
        qnn_precisions: Context precisions per target (:data:`QNN_PRECISIONS`; default w8a16 only).
        steps: Step counts whose schedule tables are stored (the model's default is always added).
        opset: ONNX opset of the exported graphs (official 17).
        fuse: Norm fusions for the float graphs (``rmsnorm``, ``groupnorm``); the w8a16/QNN path keeps
            the decomposed form (measured: the fused QDQ graph is wrong on the HTP emulator).
        quant: w8a16 settings.
        calibration_dir: Read calibration inputs from this folder instead of building them.
        calibration_prompts: Number of built-in prompts per task used when building calibration data.
        parity: ``full`` (graphs + end-to-end images), ``graphs`` or ``none``.
        parity_qnn: Also measure the QNN emulator (slow on big models).
        qnn_parity_samples: Held-out samples per graph scored on the emulator (0 = all).
        parity_calibration: Requests used to calibrate the declared parity tolerances (emulator vs
            CPU-EP QDQ, with a seed+1 negative control; 0 = keep the defaults).
        text_encoder: ``copy`` (the bundle carries ``text_encoder/``, hard-linked when possible) or ``none``.
        text_encoder_onnx: Export Qwen3-VL as ONNX graphs (``text_encoder_onnx/``), which the bundle
            backends then run instead of the torch host copy.
        text_max_tokens: Static token length of the text-encoder graph (template and image tokens
            included); None = ``seq_len`` + the larger ``drop_idx``.
        threads: torch threads for the export's torch work (calibration runs, tracing). Default 1: on a
            shared 2-core box two OpenMP threads stalled behind other jobs (tiny-model calibration 22.8 s
            with 2 threads vs 0.45 s with 1, measured side by side).
    """

    sizes: tuple[tuple[int, int], ...] = ()
    seq_len: int = 128
    precisions: tuple[str, ...] = ("fp32", "fp16", "w8a16")
    targets: tuple[str, ...] = ("sm8650",)
    qnn_precisions: tuple[str, ...] = ("w8a16",)
    steps: tuple[int, ...] = ()
    opset: int = 17
    fuse: tuple[str, ...] = ()
    quant: QuantSettings = field(default_factory=QuantSettings)
    calibration_dir: Path | None = None
    calibration_prompts: int = 4
    parity: str = "full"
    parity_qnn: bool = True
    qnn_parity_samples: int = 4
    parity_calibration: int = 4
    text_encoder: str = "copy"
    text_encoder_onnx: bool = True
    text_max_tokens: int | None = None
    threads: int = 1

    def validate(self) -> ExportConfig:
        """Check the values (errors name the option), returning ``self``."""
        for p in self.precisions:
            if p not in PRECISION_NAMES:
                raise InvalidInputError.one_of("--precision", PRECISION_NAMES, p)
        if "fp32" not in self.precisions:
            raise InvalidInputError("--precision", "must include fp32 (the source of every other graph).")
        for t in self.targets:
            if t not in QNN_TARGETS:
                raise InvalidInputError.one_of("--targets", sorted(QNN_TARGETS), t)
        for p in self.qnn_precisions:
            if p not in QNN_PRECISIONS:
                raise InvalidInputError.one_of("--qnn-precision", QNN_PRECISIONS, p)
        if not self.qnn_precisions:
            raise InvalidInputError.one_of("--qnn-precision", QNN_PRECISIONS, "")
        if self.targets and "w8a16" in self.qnn_precisions and "w8a16" not in self.precisions:
            raise InvalidInputError(
                "--targets", "needs the w8a16 precision (its QNN binaries are built from it)."
            )
        if not 1 <= self.seq_len <= 4096:
            raise InvalidInputError("--seq-len", "is out of range.", allowed="1 … 4096", given=self.seq_len)
        if self.parity not in ("full", "graphs", "none"):
            raise InvalidInputError.one_of("--parity", ["full", "graphs", "none"], self.parity)
        if self.quant.groupnorm not in QDQ_GROUPNORM_FORMS:
            raise InvalidInputError.one_of("--qdq-groupnorm", QDQ_GROUPNORM_FORMS, self.quant.groupnorm)
        if not 1 <= self.threads <= 256:
            raise InvalidInputError("--threads", "is out of range.", allowed="1 … 256", given=self.threads)
        if self.text_encoder not in ("copy", "none"):
            raise InvalidInputError.one_of("--text-encoder", ["copy", "none"], self.text_encoder)
        if self.text_max_tokens is not None and not 1 <= self.text_max_tokens <= 32768:
            raise InvalidInputError(
                "--text-max-tokens", "is out of range.", allowed="1 … 32768", given=self.text_max_tokens
            )
        return self
