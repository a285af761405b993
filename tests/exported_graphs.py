"""Tiny CNNs shaped the way real exporters write them (torch without dynamic axes, old
converters, tf2onnx/Keras), built here so the tests need no downloads.

Every graph has a first conv (3 -> 16 channels, skipped by default like any first layer)
followed by convs with 16 input channels per group, the fewest at which an 18-MAC
predictor pays for a 3x3 conv (see ``zapopt info``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.test_graph_builders import build_model

CHANNELS = 16
SIZE = 12


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _b(rng: np.random.Generator, n: int) -> np.ndarray:
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def _relu6(x: str, y: str, name: str, opset: int, consts: dict[str, np.ndarray], nodes: list) -> None:
    """ReLU6 as an exporter writes it: Clip with attributes before opset 11, else with inputs
    (one bound an initializer, the other a Constant node, as torch and tf2onnx mix them)."""
    if opset < 11:
        nodes.append(helper.make_node("Clip", [x], [y], name=name, min=0.0, max=6.0))
        return
    consts[f"{name}_min"] = np.array(0.0, np.float32)
    nodes.append(helper.make_node("Constant", [], [f"{name}_max"], name=f"{name}_maxc",
                                  value=numpy_helper.from_array(np.array(6.0, np.float32))))
    nodes.append(helper.make_node("Clip", [x, f"{name}_min", f"{name}_max"], [y], name=name))


def _head(x: str, channels: int, rng: np.random.Generator, consts: dict[str, np.ndarray], nodes: list) -> None:
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    consts["fc_w"], consts["fc_b"] = _w(rng, 10, channels), _b(rng, 10)
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1))


def plain_cnn(opset: int, batch: int | str = 1, relu6: bool = False, seed: int = 0) -> onnx.ModelProto:
    """input [batch, 3, 12, 12] -> three Conv+Relu (or ReLU6) -> GAP -> Gemm; a fixed
    ``batch`` is what torch.onnx.export writes without dynamic_axes."""
    rng = np.random.default_rng(seed)
    consts: dict[str, np.ndarray] = {}
    nodes: list = []
    x = "input"
    for k, c_in in enumerate((3, CHANNELS, CHANNELS)):
        consts[f"w{k}"], consts[f"b{k}"] = _w(rng, CHANNELS, c_in, 3, 3), _b(rng, CHANNELS)
        nodes.append(helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"v{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]))
        if relu6:
            _relu6(f"v{k}", f"a{k}", f"clip{k}", opset, consts, nodes)
        else:
            nodes.append(helper.make_node("Relu", [f"v{k}"], [f"a{k}"], name=f"relu{k}"))
        x = f"a{k}"
    _head(x, CHANNELS, rng, consts, nodes)
    return build_model(nodes, {"input": [batch, 3, SIZE, SIZE]}, ["logits"], consts, opset=opset)


def nhwc_cnn(opset: int = 13) -> onnx.ModelProto:
    """input [N, 12, 12, 3] -> Transpose to NCHW (what tf2onnx and Keras exports start with) -> convs."""
    rng = np.random.default_rng(1)
    consts: dict[str, np.ndarray] = {}
    nodes = [helper.make_node("Transpose", ["input"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2])]
    x = "nchw"
    for k, c_in in enumerate((3, CHANNELS)):
        consts[f"w{k}"], consts[f"b{k}"] = _w(rng, CHANNELS, c_in, 3, 3), _b(rng, CHANNELS)
        nodes.append(helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"v{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"v{k}"], [f"a{k}"], name=f"relu{k}"))
        x = f"a{k}"
    _head(x, CHANNELS, rng, consts, nodes)
    return build_model(nodes, {"input": ["N", SIZE, SIZE, 3]}, ["logits"], consts, opset=opset)


def pad_then_conv(opset: int = 13) -> onnx.ModelProto:
    """An explicit Pad before an unpadded Conv (how TF 'SAME' padding is often exported)."""
    rng = np.random.default_rng(2)
    consts = {"w0": _w(rng, CHANNELS, 3, 3, 3), "b0": _b(rng, CHANNELS),
              "w1": _w(rng, CHANNELS, CHANNELS, 3, 3), "b1": _b(rng, CHANNELS),
              "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["v0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["v0"], ["a0"], name="relu0"),
             helper.make_node("Pad", ["a0", "pads"], ["p0"], name="pad", mode="constant"),
             helper.make_node("Conv", ["p0", "w1", "b1"], ["v1"], name="conv1"),
             helper.make_node("Relu", ["v1"], ["a1"], name="relu1")]
    _head("a1", CHANNELS, rng, consts, nodes)
    return build_model(nodes, {"input": ["N", 3, SIZE, SIZE]}, ["logits"], consts, opset=opset)


def grouped_asymmetric(opset: int = 13) -> onnx.ModelProto:
    """A grouped conv (2 groups of 16) without bias and with asymmetric pads, then a 1x1 conv."""
    rng = np.random.default_rng(3)
    wide = 2 * CHANNELS
    consts = {"w0": _w(rng, wide, 3, 3, 3), "b0": _b(rng, wide),
              "w1": _w(rng, wide, CHANNELS, 3, 3),
              "w2": _w(rng, CHANNELS, wide, 3, 3), "b2": _b(rng, CHANNELS)}
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["v0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["v0"], ["a0"], name="relu0"),
             helper.make_node("Conv", ["a0", "w1"], ["v1"], name="grouped", group=2, pads=[0, 1, 2, 1]),
             helper.make_node("Relu", ["v1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["v2"], name="conv2", pads=[1, 0, 1, 2], strides=[2, 2]),
             helper.make_node("Relu", ["v2"], ["a2"], name="relu2")]
    _head("a2", CHANNELS, rng, consts, nodes)
    return build_model(nodes, {"input": [1, 3, SIZE, SIZE]}, ["logits"], consts, opset=opset)


def residual_dynamic_batch(opset: int = 13) -> onnx.ModelProto:
    """Two residual blocks (Conv+Relu, Conv, Add, Relu) on a dynamic batch."""
    rng = np.random.default_rng(4)
    consts = {"w0": _w(rng, CHANNELS, 3, 3, 3), "b0": _b(rng, CHANNELS)}
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["v0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["v0"], ["x0"], name="stem_relu")]
    x = "x0"
    for k in range(2):
        for j in range(2):
            consts[f"w{k}{j}"], consts[f"b{k}{j}"] = _w(rng, CHANNELS, CHANNELS, 3, 3), _b(rng, CHANNELS)
        nodes += [helper.make_node("Conv", [x, f"w{k}0", f"b{k}0"], [f"c{k}0"], name=f"block{k}_conv0", pads=[1] * 4),
                  helper.make_node("Relu", [f"c{k}0"], [f"r{k}0"], name=f"block{k}_relu0"),
                  helper.make_node("Conv", [f"r{k}0", f"w{k}1", f"b{k}1"], [f"c{k}1"], name=f"block{k}_conv1",
                                   pads=[1] * 4),
                  helper.make_node("Add", [f"c{k}1", x], [f"s{k}"], name=f"block{k}_add"),
                  helper.make_node("Relu", [f"s{k}"], [f"x{k + 1}"], name=f"block{k}_relu1")]
        x = f"x{k + 1}"
    _head(x, CHANNELS, rng, consts, nodes)
    return build_model(nodes, {"input": ["N", 3, SIZE, SIZE]}, ["logits"], consts, opset=opset)


def random_inputs(model: onnx.ModelProto, count: int, seed: int = 0) -> np.ndarray:
    """``count`` samples for the model's input (dynamic batch dim replaced by ``count``)."""
    dims: Sequence = [d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal([count, *dims[1:]]).astype(np.float32)
