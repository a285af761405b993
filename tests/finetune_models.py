"""ZAP models for the finetune tests, built without training predictors (fast).

Each eligible conv of a reference model gets a hand-made predictor: ``Z`` is a smoothed
copy of the partial ofm, so the masks look like real ones (clustered, some skipped), with
the patterns and both predictor inputs mixed across layers.
"""
from __future__ import annotations

import numpy as np
import onnx

from tests.conftest import REPO_ROOT
from zapopt.graph import analyze
from zapopt.ops.patterns import PATTERNS
from zapopt.rewrite.replace import ReplaceWithZap, ZapParams

PATTERN_CYCLE = ("checkerboard", "diag3x3-33", "tile5x5-40", "rows-50")


def reference_model(name: str) -> onnx.ModelProto:
    return onnx.load(str(REPO_ROOT / "models" / name / f"{name}.onnx"))


def smoothing_predictor(channels: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """dw3x3 (positive taps) -> relu -> dw3x3: Z ~ local mean of P, plus per-channel noise."""
    pw1 = np.full((channels, 1, 3, 3), 0.2, np.float32) + rng.normal(0, 0.05, (channels, 1, 3, 3)).astype(np.float32)
    pw2 = np.full((channels, 1, 3, 3), 0.2, np.float32) + rng.normal(0, 0.05, (channels, 1, 3, 3)).astype(np.float32)
    pb1 = rng.normal(0, 0.05, channels).astype(np.float32)
    pb2 = rng.normal(-0.05, 0.05, channels).astype(np.float32)
    return pw1, pb1, pw2, pb2


def zap_reference_model(name: str, threshold: float = 0.05, seed: int = 0) -> onnx.ModelProto:
    """``models/NAME`` with every eligible conv but the first replaced by a ZapConv."""
    original = reference_model(name)
    rng = np.random.default_rng(seed)
    convs = [c for c in analyze(original).convs if c.eligible and not c.first_layer]
    params = {}
    for index, conv in enumerate(convs):
        channels = conv.weight_shape[0]
        pattern = PATTERNS[PATTERN_CYCLE[index % len(PATTERN_CYCLE)]]
        source = ("preactivation", "activation")[index % 2]
        params[conv.conv] = ZapParams.from_arrays(*smoothing_predictor(channels, rng), pattern, threshold, source)
    return ReplaceWithZap(params)(original).model


def tiny_zap_classifier(seed: int = 0, classes: int = 3) -> onnx.ModelProto:
    """input [N,1,8,8] -> Conv(1->12)+Relu -> ZapConv(12->6, checkerboard) -> GAP -> Flatten -> Gemm(6->classes)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int, scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", 12, 1, 3, 3, scale=0.5), init("b1", 12, scale=0.1), init("w2", 6, 12, 3, 3, scale=0.2),
             init("b2", 6, scale=0.1), init("fc.w", classes, 6, scale=0.5), init("fc.b", classes, scale=0.1)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    params = {"conv2": ZapParams.from_arrays(*smoothing_predictor(6, rng), PATTERNS["checkerboard"], 0.02,
                                             "preactivation")}
    return ReplaceWithZap(params)(model).model


def tiny_labeled_arrays(count: int, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images whose class is the brightest of ``classes`` horizontal bands (learnable fast)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, count)
    x = rng.random((count, 1, 8, 8), dtype=np.float32) * 0.5
    bands = np.array_split(np.arange(8), classes)
    for i, label in enumerate(y):
        x[i, 0, bands[label]] += 0.5
    return x, y.astype(np.int64)
