"""ReplaceWithZap on a tiny Conv+BN+ReLU / residual / ReLU6 network."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.zap_builders import chain_model, ort_run
from zapopt.errors import ZapoptError
from zapopt.ops import get_pattern, is_zap_node, reference_session
from zapopt.rewrite import ExpandZapToOnnx, PassManager, ReplaceWithZap, ZapParams, read_zap_layers, rule_of

CHANNELS = {"conv1": 4, "conv2": 4, "conv3": 5}


def params(channels: int, threshold: float = -math.inf, seed: int = 0, pattern: str = "checkerboard") -> ZapParams:
    rng = np.random.default_rng(seed)
    return ZapParams.from_arrays(
        pw1=rng.standard_normal((channels, 1, 3, 3)), pb1=rng.standard_normal(channels) * 0.1,
        pw2=rng.standard_normal((channels, 1, 3, 3)), pb2=rng.standard_normal(channels) * 0.1,
        pattern=get_pattern(pattern), threshold=threshold,
    )


def all_layers(threshold: float = -math.inf) -> dict[str, ZapParams]:
    return {name: params(c, threshold, seed=i) for i, (name, c) in enumerate(CHANNELS.items())}


def image(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_minus_inf_threshold_reproduces_the_original_model() -> None:
    model = chain_model()
    original = model.SerializeToString()
    rewritten = ReplaceWithZap(all_layers())(model)
    assert rewritten.modified
    assert model.SerializeToString() == original, "the input ModelProto must not change"
    onnx.checker.check_model(rewritten.model)
    x = image()
    expected = ort_run(model, {"input": x})
    for got, want in zip(reference_session(rewritten.model).run(None, {"input": x}), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    expanded = ExpandZapToOnnx()(rewritten.model).model
    for got, want in zip(ort_run(expanded, {"input": x}), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_graph_shape_after_rewrite() -> None:
    model = ReplaceWithZap(all_layers())(chain_model()).model
    assert [n.op_type for n in model.graph.node] == ["ZapConv"] * 3
    assert [n.name for n in model.graph.node] == ["conv1", "conv2", "conv3"]
    assert all(rule_of(n) == "ReplaceWithZap" for n in model.graph.node)
    assert any(op.domain == "ai.zapopt" and op.version == 1 for op in model.opset_import)
    assert [o.name for o in model.graph.output] == ["out", "r1"]
    inits = {t.name for t in model.graph.initializer}
    assert not inits & {"w1", "b1", "w2", "w3", "b3", "zero", "six", "bn1.scale", "bn2.var"}, "dead initializers stay"
    value_info = {v.name: v for v in model.graph.value_info}
    assert "r2" in value_info and [d.dim_value for d in value_info["r2"].type.tensor_type.shape.dim] == [1, 4, 8, 8]
    assert not {"c1", "n1", "c2", "n2", "a2", "c3"} & set(value_info)


def test_layer_records_describe_the_chain() -> None:
    layers = {layer.name: layer for layer in read_zap_layers(ReplaceWithZap(all_layers(0.3))(chain_model()).model)}
    assert layers["conv1"].skip is None and layers["conv1"].attrs.clip_max == math.inf
    assert layers["conv2"].skip == "r1" and layers["conv2"].input == "r1" and layers["conv2"].output == "r2"
    assert layers["conv3"].attrs.clip_max == 6.0
    assert layers["conv3"].attrs.pads == (0, 0, 1, 1) and layers["conv3"].attrs.strides == (2, 2)  # SAME_UPPER
    assert layers["conv3"].weight_shape == (5, 4, 3, 3)
    assert all(layer.threshold == pytest.approx(0.3) and layer.pattern.name == "checkerboard" for layer in layers.values())


def test_folded_weights_and_predictor_are_stored() -> None:
    layer = params(4, 0.0, seed=9)
    model = ReplaceWithZap({"conv2": layer})(chain_model()).model
    node = next(n for n in model.graph.node if is_zap_node(n))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits[node.input[3]], layer.predictor.pw1)
    np.testing.assert_array_equal(inits[node.input[6]], layer.predictor.pb2)
    assert node.input[2] in inits, "conv2 has no bias but its BN gives it one"
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization", "Relu", "ZapConv", "Conv", "Clip"]


def test_partial_rewrite_with_a_real_threshold_matches_the_reference() -> None:
    model = ReplaceWithZap({"conv2": params(4, 0.2, seed=3, pattern="tile5x5-60")})(chain_model()).model
    x = image(5)
    expanded = ExpandZapToOnnx(expose_masks=True)(model).model
    got = ort_run(expanded, {"input": x})
    want = reference_session(model).run(None, {"input": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    assert 0.6 <= got[2].mean() < 1.0, "some activations predicted zero, the pattern's 60 % always computed"


def test_pass_manager_sequence() -> None:
    result = PassManager([ReplaceWithZap(all_layers()), ExpandZapToOnnx()])(chain_model())
    assert result.modified and not any(is_zap_node(n) for n in result.model.graph.node)


def test_errors_are_actionable() -> None:
    model = chain_model()
    with pytest.raises(ZapoptError, match="no Conv named 'conv9'.*conv1"):
        ReplaceWithZap({"conv9": params(4)})(model)
    with pytest.raises(ZapoptError, match="5 output channels but its predictor has 4"):
        ReplaceWithZap({"conv3": params(4)})(model)
    with pytest.raises(TypeError):
        ReplaceWithZap({"conv1": {"pw1": 1}})  # type: ignore[dict-item]
    with pytest.raises(ZapoptError, match=r"shape \(4, 1, 3, 3\)"):
        ZapParams.from_arrays(pw1=np.zeros((4, 1, 3, 3)), pb1=np.zeros(4), pw2=np.zeros((4, 3, 3)), pb2=np.zeros(4),
                  pattern=get_pattern("all"), threshold=0.0)


def test_names_from_graph_analysis_address_unnamed_convs() -> None:
    from zapopt.graph import analyze

    model = chain_model()
    for node in model.graph.node:
        node.name = ""
    records = analyze(model).convs
    layers = {rec.conv: params(rec.weight_shape[0], seed=i) for i, rec in enumerate(records)}
    rewritten = ReplaceWithZap(layers)(model).model
    by_name = {layer.name: layer for layer in read_zap_layers(rewritten)}
    assert sorted(by_name) == sorted(rec.conv for rec in records)
    for rec in records:
        layer = by_name[rec.conv]
        assert (layer.input, layer.output, layer.skip) == (rec.conv_input, rec.output, rec.skip_input)
        assert (layer.attrs.strides, layer.attrs.pads, layer.attrs.clip_max) == (rec.strides, rec.pads, rec.clip_max)
        assert layer.weight_shape == rec.weight_shape
    x = image(6)
    for got, want in zip(ort_run(ExpandZapToOnnx()(rewritten).model, {"input": x}), ort_run(model, {"input": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_duplicated_node_names_are_ambiguous() -> None:
    model = chain_model()
    for node in model.graph.node:
        if node.op_type == "Conv":
            node.name = "same"
    with pytest.raises(ZapoptError, match="several nodes are named 'same'"):
        ReplaceWithZap({"same": params(4)})(model)
    rewritten = ReplaceWithZap({"Conv_3": params(4)})(model).model
    assert [n.name for n in rewritten.graph.node if is_zap_node(n)] == ["Conv_3"]


def test_float16_weights_are_refused() -> None:
    model = chain_model()
    for init in model.graph.initializer:
        if init.name == "w3":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), "w3"))
    with pytest.raises(ZapoptError, match="float16 weights"):
        ReplaceWithZap({"conv3": params(5)})(model)


def test_conv_addressed_by_output_name_gives_the_node_that_name() -> None:
    model = chain_model()
    for node in model.graph.node:
        if node.name == "conv3":
            node.name = ""
    rewritten = ReplaceWithZap({"c3": params(5)})(model).model
    assert [n.name for n in rewritten.graph.node if is_zap_node(n)] == ["c3"]


def test_weights_behind_identity_and_constant_nodes_are_read_and_cleaned_up() -> None:
    model = chain_model()
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    scale = numpy_helper.to_array(inits["bn1.scale"])
    kept = [t for t in graph.initializer if t.name != "bn1.scale"]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    shared = helper.make_node("Identity", ["w2"], ["w2_shared"], name="share_w2")
    constant = helper.make_node("Constant", [], ["bn1.scale"], name="bn1_scale", value=numpy_helper.from_array(scale))
    for node in graph.node:
        if node.name == "conv2":
            node.input[1] = "w2_shared"
    nodes = [shared, constant, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    rewritten = ReplaceWithZap(all_layers())(model).model
    assert [n.op_type for n in rewritten.graph.node] == ["ZapConv"] * 3
    assert "w2" not in {t.name for t in rewritten.graph.initializer}
    x = image(7)
    for got, want in zip(reference_session(rewritten).run(None, {"input": x}), ort_run(model, {"input": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
