"""Tiny ONNX graphs and random ZapConv layers shared by the ops/rewrite tests."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from zapopt.ops import PATTERNS, ZapConvAttrs, make_zap_node, zap_conv_trace
from zapopt.ops.reference import conv_output_size

#: Computed may differ where the reference's Z is within Z_EPS * (1 + max|Z|) of the threshold.
Z_EPS = 1e-4

IR_VERSION = 10  # what onnxruntime 1.18+ accepts and the first with node metadata_props


def ort_run(model: onnx.ModelProto, feeds: dict, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, outputs=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def random_zap_case(rng: np.random.Generator) -> dict:
    """A random valid ZapConv layer: arrays, attributes (threshold chosen from its own Z)."""
    while True:
        group = int(rng.choice([1, 1, 2, 3]))
        cg, mg = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        if rng.random() < 0.15:  # depthwise
            cg, mg = 1, 1
            group = int(rng.integers(2, 5))
        kh, kw = (int(v) for v in rng.choice([1, 2, 3, 5], size=2))
        strides = tuple(int(v) for v in rng.integers(1, 3, size=2))
        dilations = tuple(int(v) for v in rng.integers(1, 3, size=2))
        pads = tuple(int(v) for v in rng.integers(0, 3, size=4))
        h, w = (int(v) for v in rng.integers(3, 13, size=2))
        ho = conv_output_size(h, kh, strides[0], pads[0], pads[2], dilations[0])
        wo = conv_output_size(w, kw, strides[1], pads[1], pads[3], dilations[1])
        if ho >= 1 and wo >= 1:
            break
    n, c_in, c_out = int(rng.integers(1, 3)), group * cg, group * mg
    arrays = {
        "X": _f32(rng, n, c_in, h, w),
        "W": _f32(rng, c_out, cg, kh, kw, scale=1 / math.sqrt(cg * kh * kw)),
        "B": _f32(rng, c_out, scale=0.3) if rng.random() < 0.7 else None,
        "PW1": _f32(rng, c_out, 1, 3, 3, scale=0.5),
        "PB1": _f32(rng, c_out, scale=0.2),
        "PW2": _f32(rng, c_out, 1, 3, 3, scale=0.5),
        "PB2": _f32(rng, c_out, scale=0.2),
        "Skip": _f32(rng, n, c_out, ho, wo) if rng.random() < 0.4 else None,
    }
    pattern = PATTERNS[str(rng.choice(sorted(PATTERNS)))]
    clip_max = math.inf if rng.random() < 0.5 else float(rng.choice([6.0, 0.5, 1.0]))
    predictor_input = str(rng.choice(["activation", "preactivation"]))
    geometry = dict(strides=strides, pads=pads, dilations=dilations, group=group, clip_max=clip_max,
                    predictor_input=predictor_input)
    probe = zap_conv_trace(**_trace_inputs(arrays), attrs=ZapConvAttrs(pattern=pattern, threshold=0.0, **geometry))
    draw = rng.random()
    if draw < 0.1:
        threshold = -math.inf
    elif draw < 0.2:
        threshold = math.inf
    else:  # halfway between two neighbouring scores: no ties with Z itself
        z = np.unique(probe.Z)
        k = int(rng.integers(0, max(len(z) - 1, 1)))
        threshold = float(z[k]) if len(z) == 1 else float((z[k] + z[k + 1]) / 2)
    return {"arrays": arrays, "attrs": ZapConvAttrs(pattern=pattern, threshold=threshold, **geometry)}


def _trace_inputs(arrays: dict) -> dict:
    return {k: arrays[k] for k in ("X", "W", "B", "PW1", "PB1", "PW2", "PB2", "Skip")}


def trace_of(case: dict):
    return zap_conv_trace(**_trace_inputs(case["arrays"]), attrs=case["attrs"])


def zap_model(case: dict, opset: int = 17, dynamic: bool = False, declare_computed: bool = False) -> onnx.ModelProto:
    """One ZapConv node: X (and Skip) are graph inputs, the weights initializers."""
    arrays = case["arrays"]
    inits = [numpy_helper.from_array(arrays[k], k) for k in ("W", "PW1", "PB1", "PW2", "PB2")]
    if arrays["B"] is not None:
        inits.append(numpy_helper.from_array(arrays["B"], "B"))
    node = make_zap_node(
        name="zap0", x="X", w="W", b="B" if arrays["B"] is not None else "", pw1="PW1", pb1="PB1",
        pw2="PW2", pb2="PB2", skip="Skip" if arrays["Skip"] is not None else "", y="Y",
        computed="Computed" if declare_computed else "", attrs=case["attrs"],
    )
    y_shape = list(trace_of(case).Y.shape)

    def shape(array_shape: list[int]) -> list:
        return array_shape[:2] + (["h", "w"] if dynamic else array_shape[2:])

    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape(list(arrays["X"].shape)))]
    if arrays["Skip"] is not None:
        skip_shape = list(arrays["Skip"].shape)
        inputs.append(helper.make_tensor_value_info("Skip", TensorProto.FLOAT, skip_shape[:2] + (["ho", "wo"] if dynamic else skip_shape[2:])))
    out_shape = y_shape[:2] + (["ho", "wo"] if dynamic else y_shape[2:])
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)]
    if declare_computed:
        outputs.append(helper.make_tensor_value_info("Computed", TensorProto.BOOL, out_shape))
    graph = helper.make_graph([node], "zap", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.zapopt", 1)]
    )
    model.ir_version = IR_VERSION
    return model


def feeds_of(case: dict) -> dict:
    arrays = case["arrays"]
    feeds = {"X": arrays["X"]}
    if arrays["Skip"] is not None:
        feeds["Skip"] = arrays["Skip"]
    return feeds


def _bn(rng: np.random.Generator, name: str, c: int, inp: str, out: str) -> tuple[onnx.NodeProto, list]:
    params = {
        "scale": (rng.random(c) + 0.5).astype(np.float32),
        "bias": _f32(rng, c, scale=0.2),
        "mean": _f32(rng, c, scale=0.2),
        "var": (rng.random(c) + 0.5).astype(np.float32),
    }
    inits = [numpy_helper.from_array(v, f"{name}.{k}") for k, v in params.items()]
    node = helper.make_node(
        "BatchNormalization", [inp] + [f"{name}.{k}" for k in params], [out], name=name, epsilon=1e-3
    )
    return node, inits


def chain_model(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """input[1,3,8,8] -> conv1+BN+Relu -> conv2+BN+Add(relu1)+Relu -> conv3(stride 2)+Clip(0,6) -> out.

    conv2 has no bias; conv3's bias and clip bounds are initializers; relu1 also feeds a
    second graph output so the residual input is shared.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_f32(rng, 4, 3, 3, 3, scale=0.4), "w1"),
        numpy_helper.from_array(_f32(rng, 4, scale=0.1), "b1"),
        numpy_helper.from_array(_f32(rng, 4, 4, 3, 3, scale=0.3), "w2"),
        numpy_helper.from_array(_f32(rng, 5, 4, 3, 3, scale=0.5), "w3"),
        numpy_helper.from_array(_f32(rng, 5, scale=0.1), "b3"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
    ]
    bn1, bn1_inits = _bn(rng, "bn1", 4, "c1", "n1")
    bn2, bn2_inits = _bn(rng, "bn2", 4, "c2", "n2")
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        bn1,
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        bn2,
        helper.make_node("Add", ["r1", "n2"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Clip", ["c3", "zero", "six"], ["out"], name="clip3"),
    ]
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5, 4, 4]),
         helper.make_tensor_value_info("r1", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits + bn1_inits + bn2_inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def assert_agrees(case: dict, y: np.ndarray, computed: np.ndarray, trace=None) -> None:
    """docs/zap_op.md's conformance rule: Computed equal away from the threshold, Y to float32 tolerance.

    ``trace`` is the case's reference trace if the caller already has it.
    """
    trace = trace_of(case) if trace is None else trace
    assert y.shape == trace.Y.shape and computed.shape == trace.Computed.shape
    assert computed.dtype == np.bool_
    threshold = np.float32(case["attrs"].threshold)
    near = np.abs(trace.Z.astype(np.float64) - threshold) <= Z_EPS * (1 + np.abs(trace.Z).max())
    differ = computed != trace.Computed
    assert not (differ & ~near).any(), f"Computed differs away from the threshold at {np.argwhere(differ & ~near)[:5]}"
    assert computed[:, :, trace.S].all(), "pattern positions must always be computed"
    both = computed & trace.Computed
    scale = 1 + float(np.abs(trace.Full).max())
    np.testing.assert_allclose(y[both], trace.Y[both], rtol=1e-5, atol=2e-6 * scale)
    neither = ~computed & ~trace.Computed
    assert (y[neither] == 0).all() and (trace.Y[neither] == 0).all()
