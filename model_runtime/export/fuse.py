"""Export stage ② (fuse): rewrite decomposed RMSNorm / GroupNorm chains as single standard ONNX ops.

``torch.onnx.export`` decomposes both norms. The official Android passes (``fuse_rmsnorm_onnx.py``,
``fuse_groupnorm_onnx.py``) collapse them again; this module does the same with its own matcher:

* RMSNorm — ``Pow(x, 2) → ReduceMean(axis −1) → Add(ε) → Sqrt → Div(x, ·) → Mul(γ)`` (or the
  ``Div(1, ·) → Mul(x, ·)`` form the exporter writes before ORT's basic optimiser merges it) becomes
  ``RMSNormalization(x, γ, axis=−1, epsilon=ε, stash_type=1)`` (ONNX opset 23). This covers the per-head
  q/k norms and the text projector's norm.
* GroupNorm — ``Reshape[N, G, −1] → InstanceNormalization(1, 0) → Reshape[N, C, H, W] → Mul(γ) → Add(β)``
  becomes ``GroupNormalization(x, γ, β, num_groups=G, epsilon, stash_type=1)`` with per-channel γ/β
  (ONNX opset 21 semantics). This removes the huge flattened intermediate.

Only complete chains whose intermediates have a single consumer are rewritten, and the model's default
opset is raised to the version the new ops need (with ``onnx.version_converter``, which also rewrites ops
whose signature changed, e.g. ReduceMean's ``axes`` becoming an input in opset 18).

One rewrite goes the other way, for the graph that is quantized for the HTP (:func:`groupnorm_as_reductions`):
the same GroupNorm chain becomes reshape-free per-channel statistics, ``ReduceMean`` over H, W → a grouped
1×1 ``Conv`` that averages the channels of each group → ``x − μ``, the same for the variance,
``÷ √(σ² + ε)``, ``× γ + β``. The QNN HTP compiler miscomputed the ``Reshape → InstanceNormalization →
Reshape`` form inside the nano UNet (docs/nano.md, "Where the w8a16 context went wrong"); this form contains
no reshape.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

RMS_NORM_OPSET = 23
GROUP_NORM_OPSET = 21
FUSIONS = ("rmsnorm", "groupnorm")
QDQ_GROUPNORM_FORMS = ("reductions", "reshape")
"""How the w8a16 graph writes GroupNorm: reshape-free reductions (default) or the exporter's reshape form."""


@dataclass(frozen=True, slots=True)
class FusionReport:
    """How many chains each pass rewrote and the resulting opset."""

    rmsnorm: int
    groupnorm: int
    opset: int

    def as_dict(self) -> dict[str, int]:
        """JSON form for the manifest."""
        return {"rmsnorm": self.rmsnorm, "groupnorm": self.groupnorm, "opset": self.opset}


class _Graph:
    """Producer/consumer indexes over one ONNX graph (rebuilt after each pass)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.inits = {init.name: init for init in graph.initializer}
        self.outputs = {out.name for out in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The single node reading ``name`` (None if several, none, or a graph output)."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]


def _attr(node: onnx.NodeProto, name: str) -> object | None:
    for attr in node.attribute:
        if attr.name == name:
            value: object = helper.get_attribute_value(attr)
            return value
    return None


def _scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _reduce_axes(g: _Graph, node: onnx.NodeProto) -> list[int] | None:
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1:
        value = g.const(node.input[1])
        axes = None if value is None else [int(a) for a in value.reshape(-1)]
    return None if axes is None else [int(a) for a in axes]  # type: ignore[attr-defined]


def _match_rmsnorm(
    g: _Graph, pow_node: onnx.NodeProto, rank: dict[str, int]
) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """Match one RMSNorm chain starting at ``Pow``; returns (nodes to remove, fused node)."""
    if _scalar(g.const(pow_node.input[1])) != 2.0:
        return None
    x = pow_node.input[0]
    mean = g.only_consumer(pow_node.output[0])
    if mean is None or mean.op_type != "ReduceMean" or _attr(mean, "keepdims") not in (None, 1):
        return None
    axes = _reduce_axes(g, mean)
    if axes not in ([-1], [rank.get(x, 0) - 1]):
        return None
    add = g.only_consumer(mean.output[0])
    if add is None or add.op_type != "Add":
        return None
    other = add.input[1] if add.input[0] == mean.output[0] else add.input[0]
    eps = _scalar(g.const(other))
    if eps is None:
        return None
    sqrt = g.only_consumer(add.output[0])
    if sqrt is None or sqrt.op_type != "Sqrt":
        return None
    div = g.only_consumer(sqrt.output[0])
    if div is None or div.op_type != "Div" or div.input[1] != sqrt.output[0]:
        return None
    chain = [pow_node, mean, add, sqrt, div]
    if div.input[0] == x:
        normed = div.output[0]
    elif _scalar(g.const(div.input[0])) == 1.0:
        mul_x = g.only_consumer(div.output[0])
        if mul_x is None or mul_x.op_type != "Mul" or x not in mul_x.input:
            return None
        chain.append(mul_x)
        normed = mul_x.output[0]
    else:
        return None
    scale_mul = g.only_consumer(normed)
    if scale_mul is None or scale_mul.op_type != "Mul":
        return None
    scale = scale_mul.input[1] if scale_mul.input[0] == normed else scale_mul.input[0]
    gamma = g.const(scale)
    if gamma is None or gamma.ndim != 1:
        return None
    chain.append(scale_mul)
    fused = helper.make_node(
        "RMSNormalization",
        [x, scale],
        [scale_mul.output[0]],
        name=f"{pow_node.name}/RMSNormalization",
        axis=-1,
        epsilon=eps,
        stash_type=1,
    )
    return chain, fused


def _match_groupnorm(
    g: _Graph, inorm: onnx.NodeProto
) -> tuple[list[onnx.NodeProto], onnx.NodeProto, list[onnx.TensorProto]] | None:
    """Match one GroupNorm chain around ``InstanceNormalization``."""
    first = g.producer.get(inorm.input[0])
    if first is None or first.op_type != "Reshape" or g.only_consumer(first.output[0]) is not inorm:
        return None
    target = g.const(first.input[1])
    if target is None or target.size != 3:
        return None
    groups = int(target.reshape(-1)[1])
    ones, zeros = g.const(inorm.input[1]), g.const(inorm.input[2])
    if ones is None or zeros is None or not (np.all(ones == 1) and np.all(zeros == 0)) or ones.size != groups:
        return None
    back = g.only_consumer(inorm.output[0])
    if back is None or back.op_type != "Reshape":
        return None
    mul = g.only_consumer(back.output[0])
    if mul is None or mul.op_type != "Mul":
        return None
    gamma_name = mul.input[1] if mul.input[0] == back.output[0] else mul.input[0]
    add = g.only_consumer(mul.output[0])
    if add is None or add.op_type != "Add":
        return None
    beta_name = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
    gamma, beta = g.const(gamma_name), g.const(beta_name)
    if gamma is None or beta is None:
        return None
    channels = gamma.size
    if beta.size != channels or channels % groups:
        return None
    eps = _attr(inorm, "epsilon")
    stem = inorm.name.rsplit("/", 1)[0] or inorm.name
    gamma_t = numpy_helper.from_array(gamma.reshape(channels).astype(np.float32), f"{stem}/gn_scale")
    beta_t = numpy_helper.from_array(beta.reshape(channels).astype(np.float32), f"{stem}/gn_bias")
    fused = helper.make_node(
        "GroupNormalization",
        [first.input[0], gamma_t.name, beta_t.name],
        [add.output[0]],
        name=f"{stem}/GroupNormalization",
        num_groups=groups,
        epsilon=1e-5 if eps is None else float(eps),  # type: ignore[arg-type]
        stash_type=1,
    )
    return [first, inorm, back, mul, add], fused, [gamma_t, beta_t]


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            ranks[vi.name] = len(tt.shape.dim)
    return ranks


def _replace(
    graph: onnx.GraphProto, removed: Iterable[onnx.NodeProto], added: dict[int, list[onnx.NodeProto]]
) -> None:
    """Remove ``removed`` and insert ``added`` (keyed by the id of the chain's first node) in place."""
    drop = {id(n) for n in removed}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes += added.get(id(node), [])
        if id(node) not in drop:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _groupnorm_matches(
    model: onnx.ModelProto,
) -> list[tuple[list[onnx.NodeProto], onnx.NodeProto, list[onnx.TensorProto]]]:
    """Every complete GroupNorm chain of ``model`` (:func:`_match_groupnorm`), in graph order."""
    g = _Graph(model.graph)
    found = (_match_groupnorm(g, n) for n in model.graph.node if n.op_type == "InstanceNormalization")
    return [m for m in found if m is not None]


def _prune_unused(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # Constant nodes left without readers (the chains' ε and exponent) are dropped too.
    nodes = [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)


def _default_opset(model: onnx.ModelProto) -> int:
    return int(next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")))


def fuse_norms(
    model: onnx.ModelProto, fusions: Iterable[str] = FUSIONS
) -> tuple[onnx.ModelProto, FusionReport]:
    """Fuse RMSNorm and/or GroupNorm chains.

    Args:
        model: An fp32 graph (after ORT basic optimisation or straight from the exporter).
        fusions: Subset of ``rmsnorm``, ``groupnorm``.

    Returns:
        The rewritten model (opset raised as needed) and what was fused.
    """
    wanted = set(fusions)
    unknown = wanted - set(FUSIONS)
    if unknown:
        raise ValueError(f"unknown fusions {sorted(unknown)}; known: {list(FUSIONS)}")
    present = {node.op_type for node in model.graph.node}
    if "Pow" not in present:
        wanted.discard("rmsnorm")
    if "InstanceNormalization" not in present:
        wanted.discard("groupnorm")
    opset = _default_opset(model)
    if not wanted:
        return model, FusionReport(rmsnorm=0, groupnorm=0, opset=opset)
    need = opset
    if "rmsnorm" in wanted:
        need = max(need, RMS_NORM_OPSET)
    if "groupnorm" in wanted:
        need = max(need, GROUP_NORM_OPSET)
    if need > opset:
        # Convert first so that every op keeps its meaning; the fused ops are then written at `need`.
        model = onnx.version_converter.convert_version(model, need)
    n_rms = n_gn = 0
    if "groupnorm" in wanted:
        removed: list[onnx.NodeProto] = []
        added: dict[int, list[onnx.NodeProto]] = {}
        new_inits: list[onnx.TensorProto] = []
        for chain, fused, inits in _groupnorm_matches(model):
            removed += chain
            added[id(chain[0])] = [fused]
            new_inits += inits
            n_gn += 1
        _replace(model.graph, removed, added)
        model.graph.initializer.extend(new_inits)
    if "rmsnorm" in wanted:
        ranks = _ranks(model)
        g = _Graph(model.graph)
        removed = []
        added = {}
        for node in list(model.graph.node):
            if node.op_type != "Pow":
                continue
            rms = _match_rmsnorm(g, node, ranks)
            if rms is None:
                continue
            chain, fused = rms
            removed += chain
            added[id(chain[0])] = [fused]
            n_rms += 1
        _replace(model.graph, removed, added)
    _prune_unused(model.graph)
    onnx.checker.check_model(model)
    return model, FusionReport(rmsnorm=n_rms, groupnorm=n_gn, opset=_default_opset(model))


def groupnorm_as_reductions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every GroupNorm chain without reshapes (the form quantized for the HTP).

    ``y = (x − μ_g) / √(σ²_g + ε) · γ + β`` with per-channel means over H, W (``ReduceMean``) and a fixed
    grouped 1×1 ``Conv`` (G groups, weights 1/k) that averages the k channels of each group, so
    μ_g and σ²_g arrive broadcast to every channel of the group. The variance is taken of ``x − μ_g``
    (two passes), which keeps the squared values small for 16-bit activations.

    Args:
        model: A float graph with decomposed GroupNorm chains (rewritten in place).

    Returns:
        The model and the number of chains rewritten.
    """
    axes_as_input = _default_opset(model) >= 18  # ReduceMean's axes became an input in opset 18
    removed: list[onnx.NodeProto] = []
    added: dict[int, list[onnx.NodeProto]] = {}
    inits: list[onnx.TensorProto] = []
    if axes_as_input:
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "/gn_spatial_axes"))
    for chain, fused, (gamma_t, beta_t) in _groupnorm_matches(model):
        groups = int(_attr(fused, "num_groups"))  # type: ignore[call-overload]
        eps = float(_attr(fused, "epsilon"))  # type: ignore[arg-type]
        gamma, beta = numpy_helper.to_array(gamma_t), numpy_helper.to_array(beta_t)
        channels = gamma.size
        per_group = channels // groups
        stem = fused.name.rsplit("/", 1)[0]
        # Grouped 1×1 conv (group = G): output channel c averages the k channels of its own group.
        average = np.full((channels, per_group, 1, 1), 1.0 / per_group, np.float32)
        inits += [
            numpy_helper.from_array(average, f"{stem}/gn_avg"),
            numpy_helper.from_array(np.array(eps, np.float32), f"{stem}/gn_eps"),
            numpy_helper.from_array(gamma.reshape(1, channels, 1, 1).astype(np.float32), f"{stem}/gn_gamma"),
            numpy_helper.from_array(beta.reshape(1, channels, 1, 1).astype(np.float32), f"{stem}/gn_beta"),
        ]
        x, y, t = fused.input[0], fused.output[0], f"{stem}/gn"

        def op(kind: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
            return helper.make_node(kind, inputs, [output], name=f"{output}/{kind}", **attrs)

        def spatial_mean(source: str, output: str) -> onnx.NodeProto:
            if axes_as_input:
                return op("ReduceMean", [source, "/gn_spatial_axes"], output, keepdims=1)
            return op("ReduceMean", [source], output, axes=[2, 3], keepdims=1)

        added[id(chain[0])] = [
            spatial_mean(x, f"{t}_mean_c"),  # (N, C, 1, 1)
            # (N, C, 1, 1): μ of the group, on every channel of it
            op("Conv", [f"{t}_mean_c", f"{stem}/gn_avg"], f"{t}_mean", group=groups),
            op("Sub", [x, f"{t}_mean"], f"{t}_centred"),  # (N, C, H, W)
            op("Mul", [f"{t}_centred", f"{t}_centred"], f"{t}_square"),
            spatial_mean(f"{t}_square", f"{t}_var_c"),
            # (N, C, 1, 1): σ² of the group
            op("Conv", [f"{t}_var_c", f"{stem}/gn_avg"], f"{t}_var", group=groups),
            op("Add", [f"{t}_var", f"{stem}/gn_eps"], f"{t}_var_eps"),
            op("Sqrt", [f"{t}_var_eps"], f"{t}_std"),
            op("Div", [f"{t}_centred", f"{t}_std"], f"{t}_normed"),
            op("Mul", [f"{t}_normed", f"{stem}/gn_gamma"], f"{t}_scaled"),
            op("Add", [f"{t}_scaled", f"{stem}/gn_beta"], y),  # (N, C, H, W) = the chain's output
        ]
        removed += chain
    _replace(model.graph, removed, added)
    model.graph.initializer.extend(inits)
    _prune_unused(model.graph)
    if model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:  # a bigger model can only be checked from a file
        onnx.checker.check_model(model)
    return model, len(added)
