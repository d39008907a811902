"""RMSNorm / GroupNorm fusion on small hand-built graphs: same numbers, fewer nodes, raised opset."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_runtime.export.fuse import fuse_norms, groupnorm_as_reductions


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def _rmsnorm_graph(reciprocal_form: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "gamma"),
    ]
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"]),
        helper.make_node("Sqrt", ["mse"], ["rms"]),
    ]
    if reciprocal_form:
        nodes += [
            helper.make_node("Div", ["one", "rms"], ["inv"]),
            helper.make_node("Mul", ["x", "inv"], ["n"]),
        ]
    else:
        nodes += [helper.make_node("Div", ["x", "rms"], ["n"])]
    nodes += [helper.make_node("Mul", ["n", "gamma"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(
        nodes,
        "rms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 5, 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _groupnorm_graph(channels: int = 8, groups: int = 4, opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(np.array([0, groups, -1], np.int64), "grouped"),
        numpy_helper.from_array(np.ones(groups, np.float32), "ones"),
        numpy_helper.from_array(np.zeros(groups, np.float32), "zeros"),
        numpy_helper.from_array(np.array([1, channels, 6, 6], np.int64), "back"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, (channels, 1, 1)).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=(channels, 1, 1)).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "grouped"], ["g"]),
        helper.make_node("InstanceNormalization", ["g", "ones", "zeros"], ["gn"], epsilon=1e-5),
        helper.make_node("Reshape", ["gn", "back"], ["r"]),
        helper.make_node("Mul", ["r", "gamma"], ["m"]),
        helper.make_node("Add", ["m", "beta"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_rmsnorm_chains_fuse_to_one_op_with_equal_output() -> None:
    x = np.random.default_rng(2).normal(size=(2, 5, 16)).astype(np.float32)
    for reciprocal in (False, True):
        model = _rmsnorm_graph(reciprocal)
        fused, report = fuse_norms(onnx.load_from_string(model.SerializeToString()), ["rmsnorm"])
        assert report.rmsnorm == 1
        assert report.opset == 23
        assert [n.op_type for n in fused.graph.node] == ["RMSNormalization", "Relu"]
        np.testing.assert_allclose(_run(fused, {"x": x}), _run(model, {"x": x}), atol=2e-6)


def test_groupnorm_chain_fuses_with_per_channel_affine() -> None:
    x = np.random.default_rng(3).normal(size=(1, 8, 6, 6)).astype(np.float32)
    model = _groupnorm_graph()
    fused, report = fuse_norms(onnx.load_from_string(model.SerializeToString()), ["groupnorm"])
    assert report.groupnorm == 1
    assert report.opset == 21
    (node,) = fused.graph.node
    assert node.op_type == "GroupNormalization"
    np.testing.assert_allclose(_run(fused, {"x": x}), _run(model, {"x": x}), atol=2e-5)


def test_graph_without_chains_is_left_alone() -> None:
    model = _groupnorm_graph()
    same, report = fuse_norms(model, ["rmsnorm"])
    assert (report.rmsnorm, report.groupnorm, report.opset) == (0, 0, 17)
    assert same is model


@pytest.mark.parametrize(("channels", "groups", "opset"), [(8, 4, 17), (12, 4, 17), (8, 2, 18), (6, 6, 17)])
def test_groupnorm_chain_becomes_reshape_free_reductions_with_equal_output(
    channels: int, groups: int, opset: int
) -> None:
    # Off-centre, unevenly scaled input: the group mean and variance both matter.
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(1, channels, 6, 6)) * rng.uniform(0.5, 3.0, (1, channels, 1, 1)) + 2.0).astype(
        np.float32
    )
    model = _groupnorm_graph(channels, groups, opset)
    reference = _run(model, {"x": x})
    rewritten, count = groupnorm_as_reductions(onnx.load_from_string(model.SerializeToString()))
    assert count == 1
    ops = [n.op_type for n in rewritten.graph.node]
    assert not {"Reshape", "InstanceNormalization"} & set(ops)
    assert ops.count("ReduceMean") == 2
    assert ops.count("Conv") == 2
    np.testing.assert_allclose(_run(rewritten, {"x": x}), reference, atol=2e-5)


def test_reductions_leave_a_graph_without_groupnorm_unchanged() -> None:
    model = _rmsnorm_graph(reciprocal_form=False)
    before = [n.op_type for n in model.graph.node]
    rewritten, count = groupnorm_as_reductions(model)
    assert count == 0
    assert [n.op_type for n in rewritten.graph.node] == before
