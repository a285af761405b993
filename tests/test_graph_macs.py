"""MAC counts against hand-computed values, and auto_pad resolution against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from tests.test_graph_builders import build_model, single_conv_model, weights
from zapopt.graph import analyze
from zapopt.graph.macs import matmul_macs


def only_layer(model, input_shapes=None):
    info = analyze(model, input_shapes)
    assert len(info.layers) == 1
    return info, info.layers[0]


def test_strided_padded_conv() -> None:
    # out = floor((10 + 2 - 3) / 2) + 1 = 5; MACs = C_out * 5 * 5 * C_in * 3 * 3
    info, layer = only_layer(single_conv_model([1, 3, 10, 10], [8, 3, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    assert layer.output_shape == (1, 8, 5, 5)
    assert layer.macs == 8 * 5 * 5 * 3 * 9 == 5400
    assert info.total_macs == 5400 and layer.share == 1.0
    conv = info.convs[0]
    assert conv.strides == (2, 2) and conv.pads == (1, 1, 1, 1) and conv.dilations == (1, 1)


def test_dilated_conv() -> None:
    # effective kernel (3 - 1) * 2 + 1 = 5; out = 11 - 5 + 1 = 7
    _, layer = only_layer(single_conv_model([1, 4, 11, 11], [6, 4, 3, 3], dilations=[2, 2]))
    assert layer.output_shape == (1, 6, 7, 7)
    assert layer.macs == 6 * 49 * 4 * 9 == 10584


def test_grouped_conv_counts_input_channels_per_group() -> None:
    info, layer = only_layer(single_conv_model([1, 8, 6, 6], [12, 2, 3, 3], group=4, pads=[1, 1, 1, 1]))
    assert layer.macs == 12 * 36 * 2 * 9 == 7776
    assert info.convs[0].group == 4


def test_asymmetric_pads_and_strides() -> None:
    # H: (7 + 0 + 2 - 3) / 1 + 1 = 7;  W: (5 + 1 + 0 - 2) // 2 + 1 = 3
    info, layer = only_layer(single_conv_model([1, 2, 7, 5], [3, 2, 3, 2], pads=[0, 1, 2, 0], strides=[1, 2]))
    assert layer.output_shape == (1, 3, 7, 3)
    assert layer.macs == 3 * 7 * 3 * 2 * 3 * 2 == 756
    assert info.convs[0].pads == (0, 1, 2, 0)


@pytest.mark.parametrize(("auto_pad", "pads", "out", "macs"), [
    # SAME: out = ceil(7 / 2) = 4, total pad = (4 - 1) * 2 + 4 - 7 = 3, odd pixel at the end (UPPER)
    ("SAME_UPPER", (1, 1, 2, 2), 4, 4 * 16 * 3 * 16),
    ("SAME_LOWER", (2, 2, 1, 1), 4, 4 * 16 * 3 * 16),
    ("VALID", (0, 0, 0, 0), 2, 4 * 4 * 3 * 16),
])
def test_auto_pad(auto_pad: str, pads: tuple, out: int, macs: int) -> None:
    model = single_conv_model([1, 3, 7, 7], [4, 3, 4, 4], strides=[2, 2], auto_pad=auto_pad)
    info, layer = only_layer(model)
    assert layer.output_shape == (1, 4, out, out)
    assert layer.macs == macs
    conv = info.convs[0]
    assert conv.pads == pads
    # The resolved explicit pads must compute exactly what onnxruntime does with auto_pad.
    explicit = single_conv_model([1, 3, 7, 7], [4, 3, 4, 4], strides=[2, 2], pads=list(conv.pads))
    x = np.random.default_rng(1).standard_normal((1, 3, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(run_ort(model, x), run_ort(explicit, x), rtol=1e-5, atol=1e-5)


def run_ort(model, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x})[0]


def test_conv_transpose() -> None:
    node = helper.make_node("ConvTranspose", ["X", "W"], ["Y"], strides=[2, 2])
    model = build_model([node], {"X": [1, 4, 5, 5]}, ["Y"], {"W": weights(4, 3, 3, 3)})
    info, layer = only_layer(model)
    assert layer.output_shape == (1, 3, 11, 11)
    assert layer.macs == 4 * 25 * 3 * 9 == 2700  # every input element times C_out * kH * kW
    assert info.convs == []  # only Conv can become a ZAP layer


def test_gemm_trans_b() -> None:
    node = helper.make_node("Gemm", ["X", "W", "B"], ["Y"], transB=1)
    model = build_model([node], {"X": [1, 64]}, ["Y"], {"W": weights(10, 64), "B": weights(10)})
    _, layer = only_layer(model)
    assert layer.macs == 64 * 10
    assert layer.input_shape == (1, 64) and layer.output_shape == (1, 10)


def test_gemm_trans_a() -> None:
    node = helper.make_node("Gemm", ["X", "W"], ["Y"], transA=1)
    model = build_model([node], {"X": [32, 4]}, ["Y"], {"W": weights(32, 5)})
    _, layer = only_layer(model)
    assert layer.macs == 4 * 5 * 32


def test_macs_are_per_sample_for_a_larger_batch() -> None:
    node = helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1)
    model = build_model([node], {"X": ["batch", 64]}, ["Y"], {"W": weights(10, 64)})
    info, layer = only_layer(model, {"X": [4, 64]})
    assert info.batch_size == 4
    assert layer.macs == 640  # 4 * 640 for the batch, reported per sample
    assert layer.output_shape == (4, 10)


def test_batched_broadcast_matmul() -> None:
    # [1, 3, 4, 5] @ [3, 5, 6] -> [1, 3, 4, 6], each output element a length-5 dot product
    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    model = build_model([node], {"A": [1, 3, 4, 5]}, ["Y"], {"B": weights(3, 5, 6)})
    _, layer = only_layer(model)
    assert layer.output_shape == (1, 3, 4, 6)
    assert layer.macs == 3 * 4 * 6 * 5 == 360


def test_matmul_of_two_inputs_divides_by_batch() -> None:
    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    model = build_model([node], {"A": [2, 1, 4, 5], "B": [2, 3, 5, 6]}, ["Y"])
    info, layer = only_layer(model)
    assert layer.output_shape == (2, 3, 4, 6)
    assert info.batch_size == 2
    assert layer.macs == 3 * 4 * 6 * 5


@pytest.mark.parametrize(("a", "b", "macs"), [
    ((5,), (5, 6), 30), ((3, 4, 5), (5,), 60), ((5,), (5,), 5), ((2, 1, 4, 5), (3, 5, 6), 720),
])
def test_matmul_shape_rules(a: tuple, b: tuple, macs: int) -> None:
    assert matmul_macs(a, b) == macs


def test_matmul_rejects_mismatched_inner_dims() -> None:
    with pytest.raises(ValueError, match="inner dims"):
        matmul_macs((2, 3), (4, 5))


def test_other_ops_count_zero_and_shares_sum_to_one() -> None:
    nodes = [
        helper.make_node("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "F"], ["Y"], transB=1),
    ]
    model = build_model(nodes, {"X": [1, 2, 4, 4]}, ["Y"], {"W": weights(3, 2, 3, 3), "F": weights(5, 12)})
    info = analyze(model)
    assert [layer.op_type for layer in info.layers] == ["Conv", "Gemm"]
    assert info.total_macs == 3 * 16 * 18 + 12 * 5
    assert sum(layer.share for layer in info.layers) == pytest.approx(1.0)
