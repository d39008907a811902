"""Export stage ③ (fp16): float16 weights and activations with float32 graph inputs and outputs.

Converted with the float16 pass maintained in ONNX Runtime (``onnxruntime.transformers.float16``,
``keep_io_types=True``). ``onnxconverter_common``'s converter — the one the official README names —
produced graphs ONNX Runtime rejects on this UNet (docs/real-unet-export.md: an fp32 input feeding a Sub
whose constant became fp16; ``Cast(to=FLOAT)`` nodes not retargeted). Kept in float32 on purpose:

* the text-mask bias ``1 − mask`` (it reads an fp32 graph input);
* the sinusoidal timestep and ``time_ids`` embeddings (``time_proj``/``add_time_proj``): ``sin``/``cos`` of
  ``t·freq`` with ``t`` up to 1000 would lose about 0.5 rad of argument precision in fp16;
* every node that reads the ``timestep``/``time_ids``/mask inputs directly.
"""

from __future__ import annotations

from pathlib import Path

import onnx

FP32_INPUTS = {"encoder_attention_mask", "timestep", "time_ids"}
FP32_NAME_PARTS = ("time_proj/",)


def fp16_block_list(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay float32 (see the module docstring)."""
    names = []
    for node in model.graph.node:
        if any(part in node.name for part in FP32_NAME_PARTS) or FP32_INPUTS.intersection(node.input):
            names.append(node.name)
    return names


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable, Kahn)."""
    produced_by: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            produced_by[name] = index
    waiting = [0] * len(graph.node)
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in set(node.input):
            src = produced_by.get(name)
            if src is not None and src != index:
                waiting[index] += 1
                readers.setdefault(src, []).append(index)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    order: list[int] = []
    while ready:
        ready.sort(reverse=True)
        current = ready.pop()
        order.append(current)
        for reader in readers.get(current, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(order) != len(graph.node):
        raise ValueError("graph has a cycle")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def convert_fp16(src: Path, dst: Path) -> dict[str, object]:
    """Write the fp16 version of a float32 graph.

    Args:
        src: float32 graph.
        dst: Output path.

    Returns:
        What the manifest records about the conversion (tool, blocked nodes).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    blocked = fp16_block_list(model)
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked or None)
    toposort(half.graph)  # the pass appends Casts for shared fp32 constants after their readers
    onnx.save(half, str(dst))
    onnx.checker.check_model(str(dst))
    return {"tool": "onnxruntime.transformers.float16", "keep_io_types": True, "fp32_nodes": len(blocked)}
