"""Input shapes: parsing, pinning dynamic dims, batch default, and unresolvable-shape errors."""
from __future__ import annotations

import pytest
from onnx import helper, numpy_helper

from tests.test_graph_builders import build_model, weights
from zapopt.errors import ZapoptError
from zapopt.graph import analyze, parse_input_shape


def dynamic_model(x_shape):
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["Y"], name="relu")]
    return build_model(nodes, {"X": x_shape}, ["Y"], {"W": weights(16, 16, 3, 3)})


@pytest.mark.parametrize(("text", "expected"), [
    ("input:1,3,224,224", ("input", (1, 3, 224, 224))),
    ("input:0:1,3,8,8", ("input:0", (1, 3, 8, 8))),
    ("x: 2, 4", ("x", (2, 4))),
])
def test_parse_input_shape(text: str, expected: tuple) -> None:
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["input", "input:", ":1,2", "input:1,x", "input:1,0", "input:1,,2"])
def test_parse_input_shape_rejects_bad_text(text: str) -> None:
    with pytest.raises(ZapoptError, match="bad input shape"):
        parse_input_shape(text)


def test_dynamic_batch_defaults_to_one_and_says_so() -> None:
    info = analyze(dynamic_model(["batch", 16, 8, 8]))
    assert info.inputs[0].shape == (1, 16, 8, 8) and info.batch_size == 1
    assert any("assumed batch size 1" in note and "'batch'" in note for note in info.notes)
    assert info.convs[0].output_shape == (1, 16, 8, 8)


def test_unresolvable_spatial_dims_name_node_and_tensor() -> None:
    model = dynamic_model(["N", 16, "H", "W"])
    with pytest.raises(ZapoptError) as caught:
        analyze(model)
    message = str(caught.value)
    assert "Conv node 'conv'" in message and "'X'" in message and "--input-shape" in message
    assert "X [1,16,H,W]" in message
    info = analyze(model, {"X": [1, 16, 6, 6]})
    assert info.total_macs == 16 * 36 * 16 * 9 and info.notes == []


def test_static_model_needs_no_input_shapes() -> None:
    info = analyze(dynamic_model([1, 16, 8, 8]))
    assert info.notes == [] and info.inputs[0].shape == (1, 16, 8, 8)


@pytest.mark.parametrize(("shapes", "expected"), [
    ({"nope": [1, 16, 8, 8]}, "model's inputs are 'X'"),
    ({"X": [1, 16, 8]}, "rank"),
    ({"X": [1, 3, 8, 8]}, "fixed size 16 on axis 1"),
    ({"X": [1, 16, 0, 8]}, "positive"),
])
def test_bad_input_shapes(shapes: dict, expected: str) -> None:
    with pytest.raises(ZapoptError, match=expected):
        analyze(dynamic_model(["N", 16, "H", "W"]), shapes)


def custom_op_model(with_value_info: bool):
    """Relu -> my.ops::Foo (no shape inference possible) -> Conv."""
    nodes = [helper.make_node("Relu", ["X"], ["r"]), helper.make_node("Foo", ["r"], ["f"], domain="my.ops"),
             helper.make_node("Conv", ["f", "W"], ["Y"], name="conv")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("X", 1, ["N", 4, 4, 4])],
                              [helper.make_tensor_value_info("Y", 1, ["N", 4, 2, 2])],
                              initializer=[numpy_helper.from_array(weights(4, 4, 3, 3), "W")])
    if with_value_info:
        graph.value_info.append(helper.make_tensor_value_info("f", 1, ["N", 4, 4, 4]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)])


def test_custom_op_without_shapes_is_named_in_the_error() -> None:
    with pytest.raises(ZapoptError, match=r"cannot follow Foo node 'Foo_1' \(domain my.ops\).*value_info"):
        analyze(custom_op_model(with_value_info=False))


@pytest.mark.parametrize("batch", [1, 3])
def test_custom_op_value_info_survives_pinning_the_batch(batch: int) -> None:
    info = analyze(custom_op_model(with_value_info=True), {"X": [batch, 4, 4, 4]})
    assert info.convs[0].input_shape == (batch, 4, 4, 4)
    assert info.total_macs == 4 * 4 * 4 * 9
