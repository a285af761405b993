"""ZAP eligibility on hand-built graphs: which Conv chains qualify, and the reason when not."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from tests.test_graph_builders import bn_node, bn_params, build_model, weights
from zapopt.graph import MAX_PREDICTOR_COST_SHARE, analyze, unique_node_names, with_unique_node_names

C = 16
X_SHAPE = [1, C, 8, 8]


def conv(name: str, x: str, y: str, w: str, **attrs):
    attrs.setdefault("pads", [1, 1, 1, 1])
    return helper.make_node("Conv", [x, w], [y], name=name, **attrs)


def by_conv(info):
    return {c.conv: c for c in info.convs}


def test_conv_bn_relu_chain_is_eligible_and_first_layer_flagged() -> None:
    nodes = [conv("conv1", "X", "c1", "W1"), bn_node("bn1", "c1", "b1"),
             helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
             conv("conv2", "r1", "c2", "W2", strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["Y"], name="relu2")]
    model = build_model(nodes, {"X": X_SHAPE}, ["Y"],
                        {"W1": weights(C, C, 3, 3), "W2": weights(32, C, 3, 3), **bn_params("bn1", C)})
    info = analyze(model)
    first, second = info.convs
    assert (first.conv, first.bn, first.add, first.act, first.output) == ("conv1", "bn1", None, "relu1", "r1")
    assert first.eligible and first.reason == "" and first.first_layer
    assert first.clip_max == math.inf and first.conv_input == "X"
    assert second.eligible and not second.first_layer
    assert second.input_shape == (1, C, 8, 8) and second.output_shape == (1, 32, 4, 4)
    assert second.weight_shape == (32, C, 3, 3) and second.strides == (2, 2) and second.group == 1
    assert second.macs == 32 * 16 * C * 9
    assert info.eligible_macs == first.macs + second.macs == info.total_macs


@pytest.mark.parametrize("reader_op", ["Sigmoid", "MaxPool"])
def test_no_relu_after_conv(reader_op: str) -> None:
    attrs = {"kernel_shape": [2, 2]} if reader_op == "MaxPool" else {}
    nodes = [conv("conv", "X", "c", "W"), helper.make_node(reader_op, ["c"], ["Y"], name="next", **attrs)]
    info = analyze(build_model(nodes, {"X": X_SHAPE}, ["Y"], {"W": weights(C, C, 3, 3)}))
    (record,) = info.convs
    assert not record.eligible
    assert "no ReLU after it" in record.reason and reader_op in record.reason
    assert record.act is None and record.output is None


def test_conv_output_that_is_a_graph_output_is_not_eligible() -> None:
    nodes = [conv("conv", "X", "c", "W"), helper.make_node("Relu", ["c"], ["Y"])]
    info = analyze(build_model(nodes, {"X": X_SHAPE}, ["Y", "c"], {"W": weights(C, C, 3, 3)}))
    assert "graph output" in info.convs[0].reason


@pytest.mark.parametrize("branch_point", ["conv", "bn", "add"])
def test_fan_out_before_the_relu(branch_point: str) -> None:
    nodes = [conv("conv", "X", "c", "W"), bn_node("bn", "c", "b"),
             helper.make_node("Add", ["b", "X"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["Y"], name="relu")]
    tapped = {"conv": "c", "bn": "b", "add": "a"}[branch_point]
    nodes.append(helper.make_node("Sigmoid", [tapped], ["side"], name="side_reader"))
    model = build_model(nodes, {"X": X_SHAPE}, ["Y", "side"], {"W": weights(C, C, 3, 3), **bn_params("bn", C)})
    (record,) = analyze(model).convs
    assert not record.eligible
    assert "used elsewhere before the ReLU" in record.reason and "side_reader" in record.reason


@pytest.mark.parametrize("skip_first", [False, True])
def test_residual_add_records_the_skip_input(skip_first: bool) -> None:
    add_inputs = ["X", "b"] if skip_first else ["b", "X"]
    nodes = [conv("conv", "X", "c", "W"), bn_node("bn", "c", "b"),
             helper.make_node("Add", add_inputs, ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["Y"], name="relu")]
    model = build_model(nodes, {"X": X_SHAPE}, ["Y"], {"W": weights(C, C, 3, 3), **bn_params("bn", C)})
    (record,) = analyze(model).convs
    assert record.eligible, record.reason
    assert (record.bn, record.add, record.skip_input, record.act, record.output) == ("bn", "add", "X", "relu", "Y")


@pytest.mark.parametrize(("kernel_b", "winner"), [(3, "conv_a"), (5, "conv_b")])
def test_two_convs_feeding_one_add_only_the_bigger_is_eligible(kernel_b: int, winner: str) -> None:
    pad = kernel_b // 2
    nodes = [conv("conv_a", "X", "ca", "Wa"), conv("conv_b", "X", "cb", "Wb", pads=[pad] * 4),
             helper.make_node("Add", ["ca", "cb"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["Y"], name="relu")]
    model = build_model(nodes, {"X": X_SHAPE}, ["Y"],
                        {"Wa": weights(C, C, 3, 3), "Wb": weights(C, C, kernel_b, kernel_b)})
    records = by_conv(analyze(model))
    loser = "conv_b" if winner == "conv_a" else "conv_a"
    assert records[winner].eligible
    assert records[winner].skip_input == ("cb" if winner == "conv_a" else "ca")
    assert not records[loser].eligible and "residual input of Add 'add'" in records[loser].reason


def test_add_that_broadcasts_is_not_a_residual() -> None:
    nodes = [conv("conv", "X", "c", "W"), helper.make_node("Add", ["c", "bias"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["Y"])]
    model = build_model(nodes, {"X": X_SHAPE}, ["Y"], {"W": weights(C, C, 3, 3), "bias": weights(C, 1, 1)})
    (record,) = analyze(model).convs
    assert not record.eligible and "broadcasts" in record.reason


def _clip_model(opset: int, min_value, max_value, as_constant_nodes: bool = False):
    nodes = [conv("conv", "X", "c", "W")]
    inits = {"W": weights(C, C, 3, 3)}
    if opset < 11:
        attrs = {k: v for k, v in (("min", min_value), ("max", max_value)) if v is not None}
        nodes.append(helper.make_node("Clip", ["c"], ["Y"], name="clip", **attrs))
        return build_model(nodes, {"X": X_SHAPE}, ["Y"], inits, opset=opset)
    bound_names = []
    for tag, value in (("lo", min_value), ("hi", max_value)):
        if value is None:
            bound_names.append("")
        elif as_constant_nodes:
            nodes.insert(0, helper.make_node("Constant", [], [tag], value=helper.make_tensor(tag, 1, [], [value])))
            bound_names.append(tag)
        else:
            inits[tag] = np.array(value, dtype=np.float32)
            bound_names.append(tag)
    while bound_names and bound_names[-1] == "":
        bound_names.pop()
    nodes.append(helper.make_node("Clip", ["c", *bound_names], ["Y"], name="clip"))
    return build_model(nodes, {"X": X_SHAPE}, ["Y"], inits, opset=opset)


@pytest.mark.parametrize(("opset", "constant_nodes"), [(6, False), (10, False), (11, False), (11, True),
                                                        (13, True), (21, False)])
def test_relu6_clip_is_eligible(opset: int, constant_nodes: bool) -> None:
    (record,) = analyze(_clip_model(opset, 0.0, 6.0, constant_nodes)).convs
    assert record.eligible, record.reason
    assert record.act == "clip" and record.clip_max == 6.0 and record.output == "Y"


def test_clip_with_only_a_lower_bound_of_zero_is_a_relu() -> None:
    (record,) = analyze(_clip_model(13, 0.0, None)).convs
    assert record.eligible and record.clip_max == math.inf


@pytest.mark.parametrize(("opset", "low", "expected"), [(13, -1.0, "min -1, not 0"), (10, -1.0, "min -1, not 0"),
                                                        (13, None, "no lower bound"), (10, None, "no lower bound")])
def test_clip_that_is_not_relu_like(opset: int, low, expected: str) -> None:
    (record,) = analyze(_clip_model(opset, low, 6.0)).convs
    assert not record.eligible and expected in record.reason


def test_clip_with_a_runtime_lower_bound() -> None:
    nodes = [conv("conv", "X", "c", "W"), helper.make_node("Clip", ["c", "lo"], ["Y"], name="clip")]
    model = build_model(nodes, {"X": X_SHAPE, "lo": []}, ["Y"], {"W": weights(C, C, 3, 3)})
    (record,) = analyze(model).convs
    assert not record.eligible and "non-constant min" in record.reason


def test_depthwise_conv_reports_the_cost_numbers() -> None:
    nodes = [conv("dw", "X", "c", "W", group=C), helper.make_node("Relu", ["c"], ["Y"])]
    (record,) = analyze(build_model(nodes, {"X": X_SHAPE}, ["Y"], {"W": weights(C, 1, 3, 3)})).convs
    assert not record.eligible
    assert "depthwise" in record.reason and "18 MACs" in record.reason and "vs 9" in record.reason


@pytest.mark.parametrize(("c_in", "eligible"), [(16, False), (64, False), (72, True), (128, True)])
def test_pointwise_conv_needs_enough_input_channels(c_in: int, eligible: bool) -> None:
    # predictor 18 MACs per output vs c_in for a 1x1 conv: eligible iff 18 / c_in <= 25 %
    nodes = [conv("pw", "X", "c", "W", pads=[0, 0, 0, 0]), helper.make_node("Relu", ["c"], ["Y"])]
    model = build_model(nodes, {"X": [1, c_in, 4, 4]}, ["Y"], {"W": weights(8, c_in, 1, 1)})
    (record,) = analyze(model).convs
    assert record.eligible == eligible == (18 / c_in <= MAX_PREDICTOR_COST_SHARE)
    if not eligible:
        assert f"vs {c_in} for this 1x1 conv" in record.reason and "25% limit" in record.reason


def test_batchnorm_with_runtime_params_is_not_foldable() -> None:
    nodes = [conv("conv", "X", "c", "W"), bn_node("bn", "c", "b"), helper.make_node("Relu", ["b"], ["Y"])]
    params = bn_params("bn", C)
    del params["bn_scale"]
    model = build_model(nodes, {"X": X_SHAPE, "bn_scale": [C]}, ["Y"], {"W": weights(C, C, 3, 3), **params})
    (record,) = analyze(model).convs
    assert not record.eligible and "non-constant params" in record.reason and "bn_scale" in record.reason


def test_runtime_weights_are_not_eligible() -> None:
    nodes = [conv("conv", "X", "c", "W"), helper.make_node("Relu", ["c"], ["Y"])]
    model = build_model(nodes, {"X": X_SHAPE, "W": [C, C, 3, 3]}, ["Y"])
    (record,) = analyze(model).convs
    assert not record.eligible and "weights ('W') are not a constant" in record.reason


def test_weights_behind_identity_count_as_constant() -> None:
    nodes = [helper.make_node("Identity", ["W0"], ["W"]), conv("conv", "X", "c", "W"),
             helper.make_node("Relu", ["c"], ["Y"])]
    (record,) = analyze(build_model(nodes, {"X": X_SHAPE}, ["Y"], {"W0": weights(C, C, 3, 3)})).convs
    assert record.eligible, record.reason


def test_nhwc_input_first_conv_behind_transpose() -> None:
    nodes = [helper.make_node("Transpose", ["X"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Sub", ["t", "mean"], ["n"]),
             conv("conv1", "n", "c1", "W1"), helper.make_node("Relu", ["c1"], ["r1"]),
             conv("conv2", "r1", "c2", "W2"), helper.make_node("Relu", ["c2"], ["Y"])]
    model = build_model(nodes, {"X": ["N", 8, 8, C]}, ["Y"],
                        {"mean": weights(1, C, 1, 1), "W1": weights(C, C, 3, 3), "W2": weights(C, C, 3, 3)})
    info = analyze(model)
    first, second = info.convs
    assert first.first_layer and not second.first_layer
    assert first.input_shape == (1, C, 8, 8) and info.inputs[0].shape == (1, 8, 8, C)
    assert first.macs == C * 64 * C * 9


def test_empty_and_duplicate_node_names_become_unique_without_touching_the_model() -> None:
    nodes = [conv("", "X", "c1", "W1"), helper.make_node("Relu", ["c1"], ["r1"], name="dup"),
             conv("", "r1", "c2", "W2"), helper.make_node("Relu", ["c2"], ["Y"], name="dup")]
    model = build_model(nodes, {"X": X_SHAPE}, ["Y"], {"W1": weights(C, C, 3, 3), "W2": weights(C, C, 3, 3)})
    before = model.SerializeToString()
    info = analyze(model)
    assert model.SerializeToString() == before
    assert unique_node_names(model.graph) == ["Conv_0", "Relu_1", "Conv_2", "Relu_3"]
    assert [(c.conv, c.act) for c in info.convs] == [("Conv_0", "Relu_1"), ("Conv_2", "Relu_3")]
    renamed = with_unique_node_names(model)
    assert [n.name for n in renamed.graph.node] == ["Conv_0", "Relu_1", "Conv_2", "Relu_3"]
    assert model.SerializeToString() == before


def test_generated_names_do_not_collide_with_real_ones() -> None:
    nodes = [helper.make_node("Relu", ["X"], ["a"], name=""), helper.make_node("Relu", ["a"], ["Y"], name="Relu_0")]
    model = build_model(nodes, {"X": [1, 2]}, ["Y"])
    names = unique_node_names(model.graph)
    assert names[1] == "Relu_0" and names[0] != "Relu_0" and len(set(names)) == 2


def test_an_eligible_conv_wins_the_shared_add_over_a_bigger_ineligible_one() -> None:
    nodes = [conv("conv_a", "X", "ca", "Wa", pads=[2, 2, 2, 2]), conv("conv_b", "X", "cb", "Wb"),
             helper.make_node("Add", ["ca", "cb"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["Y"], name="relu")]
    model = build_model(nodes, {"X": X_SHAPE, "Wa": [C, C, 5, 5]}, ["Y"], {"Wb": weights(C, C, 3, 3)})
    records = by_conv(analyze(model))
    assert records["conv_a"].macs > records["conv_b"].macs
    assert records["conv_b"].eligible and records["conv_b"].skip_input == "ca"
    assert not records["conv_a"].eligible and "not a constant" in records["conv_a"].reason
