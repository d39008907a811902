"""Export stage ④b (QDQ w8a16): quantize a float32 graph for the Snapdragon HTP with ORT's QNN tooling.

GroupNorm chains rewritten without reshapes (``fuse.groupnorm_as_reductions``; the HTP compiler
miscomputed the reshape form) → ``qnn_preprocess_model`` (LayerNorm / Gelu fusions the HTP maps to single
ops) → ``get_qnn_qdq_config`` (uint16 activations, uint8 weights, MinMax ranges from the calibration
feeds, plus the tensor overrides QNN needs) → ``quantize``. The tool upgrades the model to opset 21 itself
(16-bit Q/DQ). The input is the *decomposed* float32 graph (no RMSNorm/GroupNorm fusion): the fused QDQ
graph was measured wrong on the HTP emulator. Quantization runs on x86 only (QNN EP documentation) and
needs about 12 GB for the real UNet.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from model_runtime.export.calibration import FeedReader, Feeds
from model_runtime.export.config import QuantSettings
from model_runtime.export.fuse import groupnorm_as_reductions

logger = logging.getLogger(__name__)


def quantize_w8a16(src: Path, dst: Path, feeds: list[Feeds], settings: QuantSettings) -> dict[str, Any]:
    """Write the QDQ w8a16 graph of ``src``.

    Args:
        src: Decomposed float32 graph.
        dst: Output path.
        feeds: Calibration inputs (graph input name → array).
        settings: Quantization types and options.

    Returns:
        Facts for the manifest (settings, sample count, Q/DQ node counts, resulting opset).

    Raises:
        ValueError: No calibration feeds.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    if not feeds:
        raise ValueError(f"no calibration feeds for {src.name}")
    with tempfile.TemporaryDirectory(prefix="dreamlite-qdq-") as tmp:
        groupnorms = 0
        if settings.groupnorm == "reductions":
            rewritten, groupnorms = groupnorm_as_reductions(onnx.load(str(src)))
            if groupnorms:
                src = Path(tmp) / "groupnorm.onnx"
                onnx.save(rewritten, str(src), save_as_external_data=True, location="groupnorm.onnx.data")
        pre = Path(tmp) / "pre.onnx"
        changed = qnn_preprocess_model(str(src), str(pre), fuse_layernorm=settings.fuse_layernorm)
        source = pre if changed else src
        config = get_qnn_qdq_config(
            str(source),
            FeedReader(feeds),
            calibrate_method=CalibrationMethod[settings.calibrate_method],
            activation_type=QuantType[settings.activation_type],
            weight_type=QuantType[settings.weight_type],
            per_channel=settings.per_channel,
        )
        quantize(str(source), str(dst), config)
    model = onnx.load(str(dst), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    overrides = config.extra_options.get("TensorQuantOverrides", {})
    return {
        **settings.as_dict(),
        "calibration_samples": len(feeds),
        "preprocessed": bool(changed),
        "groupnorm_rewritten": groupnorms,
        "quantize_nodes": ops.get("QuantizeLinear", 0),
        "dequantize_nodes": ops.get("DequantizeLinear", 0),
        "nodes": len(model.graph.node),
        "opset": int(opset),
        "tensor_overrides": len(overrides),
    }
