"""The shared Conv-chain pattern: auto_pad resolution, ReLU-like activations across opsets,
and analysis and rewrite giving the same reasons."""
from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.test_graph_builders import build_model, weights
from tests.zap_builders import chain_model, ort_run
from zapopt.errors import ZapoptError
from zapopt.graph import analyze
from zapopt.graph.conv_chain import activation_check, match_conv_chain
from zapopt.graph.index import GraphIndex
from zapopt.graph.macs import conv_geometry_2d as conv_geometry
from zapopt.ops import get_pattern
from zapopt.rewrite import ReplaceWithZap, ZapParams


def _conv(**attrs) -> onnx.NodeProto:
    return helper.make_node("Conv", ["x", "w"], ["y"], name="c", **attrs)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize(("size", "kernel", "stride", "dilation"), [(8, 3, 2, 1), (7, 2, 1, 1), (9, 3, 3, 1), (10, 5, 2, 1), (5, 4, 2, 1)])
def test_auto_pad_matches_onnxruntime(auto_pad: str, size: int, kernel: int, stride: int, dilation: int) -> None:
    conv = _conv(auto_pad=auto_pad, strides=[stride, stride], dilations=[dilation, dilation])
    geometry = conv_geometry(conv, (1, 1, kernel, kernel), (1, 1, size, size))
    w = np.random.default_rng(0).standard_normal((1, 1, kernel, kernel)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((1, 1, size, size)).astype(np.float32)

    def model(node: onnx.NodeProto) -> onnx.ModelProto:
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, size, size])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 10
        return m

    explicit = _conv(pads=list(geometry.pads), strides=list(geometry.strides), dilations=list(geometry.dilations))
    np.testing.assert_allclose(ort_run(model(explicit), {"x": x})[0], ort_run(model(conv), {"x": x})[0], rtol=1e-6)


def test_same_padding_with_stride_one_needs_no_size() -> None:
    geometry = conv_geometry(_conv(auto_pad="SAME_UPPER"), (1, 1, 4, 3), None)
    assert geometry.pads == (1, 1, 2, 1)


def test_non_2d_conv_is_refused() -> None:
    with pytest.raises(ZapoptError, match="2-D"):
        conv_geometry(_conv(), (1, 1, 3), None)


def _index_for(act: onnx.NodeProto, inits: dict[str, float]) -> GraphIndex:
    graph = helper.make_graph(
        [act], "g", [], [],
        [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in inits.items()],
    )
    return GraphIndex(graph)


def clip_max_of(index: GraphIndex, act: onnx.NodeProto) -> float | None:
    """The activation's clip_max when it is ReLU-like, else None."""
    clip_max, reasons = activation_check(index, list(index.graph.node).index(act), "Conv 'c'")
    return None if reasons else clip_max


def test_relu_like_activations() -> None:
    relu = helper.make_node("Relu", ["v"], ["y"])
    assert clip_max_of(_index_for(relu, {}), relu) == math.inf
    clip6 = helper.make_node("Clip", ["v", "lo", "hi"], ["y"])
    assert clip_max_of(_index_for(clip6, {"lo": 0.0, "hi": 6.0}), clip6) == 6.0
    no_max = helper.make_node("Clip", ["v", "lo"], ["y"])
    assert clip_max_of(_index_for(no_max, {"lo": 0.0}), no_max) == math.inf
    old_style = helper.make_node("Clip", ["v"], ["y"], min=0.0, max=6.0)
    assert clip_max_of(_index_for(old_style, {}), old_style) == 6.0


def test_not_relu_like() -> None:
    no_min = helper.make_node("Clip", ["v", "", "hi"], ["y"])
    assert clip_max_of(_index_for(no_min, {"hi": 6.0}), no_min) is None
    runtime_bound = helper.make_node("Clip", ["v", "lo", "dynamic"], ["y"])
    assert clip_max_of(_index_for(runtime_bound, {"lo": 0.0}), runtime_bound) is None
    leaky = helper.make_node("LeakyRelu", ["v"], ["y"])
    assert clip_max_of(_index_for(leaky, {}), leaky) is None


def test_match_object_names_every_part_of_a_residual_chain() -> None:
    index = GraphIndex(chain_model().graph)
    chain = match_conv_chain(index, index.find_node("conv2"))
    assert chain.matched and chain.reasons == ()
    assert [index.names[k] for k in chain.positions] == ["conv2", "bn2", "add2", "relu2"]
    assert chain.skip_input == "r1" and chain.preactivation == "a2" and chain.output == "r2"
    assert chain.clip_max == math.inf
    clip = match_conv_chain(index, index.find_node("conv3"))
    assert clip.matched and clip.bn is None and clip.add is None and clip.clip_max == 6.0


def _zero_params(channels: int) -> ZapParams:
    zeros = np.zeros((channels, 1, 3, 3)), np.zeros(channels)
    return ZapParams.from_arrays(zeros[0], zeros[1], zeros[0], zeros[1], get_pattern("checkerboard"), 0.0)


def _set_initializer(model: onnx.ModelProto, name: str, value: float) -> None:
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(np.array(value, np.float32), name))


def _rename_op(model: onnx.ModelProto, node_name: str, op_type: str) -> None:
    for node in model.graph.node:
        if node.name == node_name:
            node.op_type = op_type


@pytest.mark.parametrize(("layer", "channels", "mutate", "expected"), [
    ("conv3", 5, lambda m: _set_initializer(m, "six", 0.0), "Clip 'clip3' has max 0"),
    ("conv3", 5, lambda m: _set_initializer(m, "zero", -1.0), "min -1, not 0"),
    ("conv1", 4, lambda m: _rename_op(m, "relu1", "Sigmoid"), "no ReLU after it.*goes to Sigmoid 'relu1', not Relu or Clip"),
    ("conv1", 4, lambda m: m.graph.output.append(
        helper.make_tensor_value_info("n1", onnx.TensorProto.FLOAT, [1, 4, 8, 8])), "'n1'.* is a graph output"),
])
def test_analysis_and_rewrite_give_the_same_reason(layer: str, channels: int, mutate, expected: str) -> None:
    model = chain_model()
    mutate(model)
    record = {c.conv: c for c in analyze(model).convs}[layer]
    assert not record.eligible and re.search(expected, record.reason), record.reason
    with pytest.raises(ZapoptError, match=f"Conv '{layer}' cannot become one ZapConv: .*{expected}"):
        ReplaceWithZap({layer: _zero_params(channels)})(model)


def test_a_conv_output_read_inside_a_subgraph_is_refused_by_both() -> None:
    def branch(tag: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", ["c"], [f"{tag}_out"])], tag, [],
                                 [helper.make_tensor_value_info(f"{tag}_out", onnx.TensorProto.FLOAT, None)])

    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["Y"], name="relu"),
             helper.make_node("If", ["cond"], ["Z"], name="if", then_branch=branch("then"), else_branch=branch("else"))]
    channels = 16
    model = build_model(nodes, {"X": [1, channels, 8, 8]}, ["Y", "Z"],
                        {"W": weights(channels, channels, 3, 3), "cond": np.array(True)})
    (record,) = analyze(model).convs
    assert not record.eligible and "read inside a subgraph" in record.reason
    with pytest.raises(ZapoptError, match="'c'.*read inside a subgraph"):
        ReplaceWithZap({"conv": _zero_params(channels)})(model)
