"""Chain matching details: auto_pad resolution and ReLU-like activations across opsets."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.zap_builders import ort_run
from zapopt.errors import ZapoptError
from zapopt.rewrite.graph_edit import GraphIndex
from zapopt.rewrite.match import clip_max_of, conv_geometry


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
