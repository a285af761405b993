"""ReplaceWithZeroSkip, its expansion (against a numpy reference) and the exact way back."""
from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.native_cases import assert_case_agrees, batch_model, random_case
from tests.test_rewrite_replace import all_layers, image
from tests.zap_builders import IR_VERSION, chain_model, ort_run
from zapopt.errors import ZapoptError
from zapopt.model_form import convert_model, model_form
from zapopt.ops.spec import ZeroSkipConvAttrs, is_zero_skip_node
from zapopt.rewrite import (
    ExpandZapToOnnx,
    RebuildNativeOps,
    ReplaceWithZap,
    ReplaceWithZeroSkip,
    rule_of,
    zero_skip_candidates,
)
from zapopt.rewrite.graph_edit import tag_of


def test_expansion_matches_the_numpy_reference_on_random_layers() -> None:
    """The kernel's random ZeroSkipConv layers (tests/native_cases.py), expanded to stock ops."""
    rng = np.random.default_rng(17)
    cases = [random_case(rng, "ZeroSkipConv") for _ in range(120)]
    model, feeds, names = batch_model(cases)
    del model.graph.output[:]  # declare the shapes onnx's checker wants on graph outputs
    model.graph.output.extend(helper.make_tensor_value_info(out[0], TensorProto.FLOAT, list(case.reference.shape))
                              for case, out in zip(cases, names))
    expanded = ExpandZapToOnnx()(model).model
    assert not any(is_zero_skip_node(n) for n in expanded.graph.node)
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        flat = [name for out in names for name in out]
        got = dict(zip(flat, ort_run(expanded, feeds, level, outputs=flat)))
        for case, out in zip(cases, names):
            assert_case_agrees(case, [got[name] for name in out])


def test_only_convs_whose_input_can_be_zero_qualify() -> None:
    reasons = zero_skip_candidates(chain_model())
    assert reasons["conv2"] is None and reasons["conv3"] is None
    assert "graph input" in reasons["conv1"]
    with pytest.raises(ZapoptError, match="conv1.*graph input"):
        ReplaceWithZeroSkip(["conv1"])(chain_model())
    with pytest.raises(ZapoptError, match="no Conv named 'nope'"):
        ReplaceWithZeroSkip(["nope"])(chain_model())


def test_rewritten_chain_model_equals_the_original() -> None:
    model = chain_model()
    rewrite = ReplaceWithZeroSkip()
    rewritten = rewrite(model).model
    assert set(rewrite.skipped) == {"conv1"}
    nodes = {n.name: n for n in rewritten.graph.node if is_zero_skip_node(n)}
    assert set(nodes) == {"conv2", "conv3"}
    conv2, conv3 = nodes["conv2"], nodes["conv3"]
    assert list(conv2.input)[3] == "r1" and ZeroSkipConvAttrs.from_node(conv2).activation == "relu"  # residual Add
    assert ZeroSkipConvAttrs.from_node(conv3).clip_max == 6.0 and list(conv3.input)[1] == "w3"  # no BN: weights reused
    assert tag_of(conv2, "zapopt.replaced") == "conv2,bn2,add2,relu2" and rule_of(conv2) == "ReplaceWithZeroSkip"
    x = image(3)
    for got, want in zip(ort_run(ExpandZapToOnnx()(rewritten).model, {"input": x}), ort_run(model, {"input": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _model(nodes: list, inits: list, out_shape: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    return model


def _w(name: str, c_out: int, c_in: int, k: int = 3, seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal((c_out, c_in, k, k)).astype(np.float32),
                                   name)


def test_zeros_pass_through_maxpool_and_concat_but_not_sigmoid() -> None:
    model = _model([
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["p", "p"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w1"], ["c1"], name="conv_a", pads=[1, 1, 1, 1]),  # no activation after
        helper.make_node("Sigmoid", ["c1"], ["s"], name="sig"),
        helper.make_node("Conv", ["s", "w2"], ["y"], name="conv_b", pads=[1, 1, 1, 1]),
    ], [_w("w1", 2, 4), _w("w2", 2, 2, seed=1)], [1, 2, 3, 3])
    reasons = zero_skip_candidates(model)
    assert reasons["conv_a"] is None
    assert "Sigmoid 'sig'" in reasons["conv_b"] and "exact zeros" in reasons["conv_b"]
    rewritten = ReplaceWithZeroSkip()(model).model
    node = next(n for n in rewritten.graph.node if is_zero_skip_node(n))
    assert ZeroSkipConvAttrs.from_node(node).activation == "none" and list(node.output) == ["c1"]
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(ort_run(ExpandZapToOnnx()(rewritten).model, {"x": x})[0], ort_run(model, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


def test_a_shared_conv_output_ends_the_chain_at_the_conv() -> None:
    model = _model([
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a"], name="act"),
        helper.make_node("Add", ["a", "c1"], ["y"], name="use_both"),
    ], [_w("w1", 2, 2)], [1, 2, 6, 6])
    rewritten = ReplaceWithZeroSkip()(model).model
    node = next(n for n in rewritten.graph.node if is_zero_skip_node(n))
    assert ZeroSkipConvAttrs.from_node(node).activation == "none" and [n.name for n in rewritten.graph.node][2] == "act"
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(ort_run(ExpandZapToOnnx()(rewritten).model, {"x": x})[0], ort_run(model, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ir_version", [IR_VERSION, 7])
def test_convert_round_trip_is_identical(ir_version: int) -> None:
    model = chain_model(opset=13)
    model.ir_version = ir_version
    layers = {k: v for k, v in all_layers(0.2).items() if k == "conv2"}
    native = ReplaceWithZeroSkip(["conv3"])(ReplaceWithZap(layers)(model).model).model
    assert model_form(native) == "native"
    portable = convert_model(native, "portable")
    assert model_form(portable) == "portable" and "ai.zapopt" not in {o.domain for o in portable.opset_import}
    back = convert_model(portable, "native")
    assert back.SerializeToString() == native.SerializeToString()
    assert convert_model(back, "portable").SerializeToString() == portable.SerializeToString()


def test_rebuilding_refuses_what_it_cannot_trust() -> None:
    with pytest.raises(ZapoptError, match="no zapopt layers to turn into native ops"):
        convert_model(chain_model(), "native")
    with pytest.raises(ZapoptError, match="already standard ONNX"):
        convert_model(chain_model(), "portable")
    native = ReplaceWithZeroSkip()(chain_model()).model
    with pytest.raises(ZapoptError, match="already in native form"):
        convert_model(native, "native")
    with pytest.raises(ZapoptError, match="unknown form"):
        convert_model(native, "nchwc")
    portable = convert_model(native, "portable")
    damaged = onnx.ModelProto()
    damaged.CopyFrom(portable)
    for node in damaged.graph.node:
        for entry in node.metadata_props:
            if entry.key == "zapopt.native_node":
                entry.value = "%%%"
    with pytest.raises(ZapoptError, match="damaged"):
        RebuildNativeOps()(damaged)
    stripped = onnx.ModelProto()
    stripped.CopyFrom(portable)
    for node in stripped.graph.node:
        del node.metadata_props[:]
    with pytest.raises(ZapoptError, match="zapopt.rule=ExpandZapToOnnx"):
        RebuildNativeOps()(stripped)


def test_depthwise_convs_are_not_offered() -> None:
    """The kernel has no vectorized path below 8 output channels per group (MobileNetV2's
    depthwise convs ran 30-100x slower natively), so the rule refuses them with the reason."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wd"], ["d"], name="dw", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["y"], name="relu2")]
    inits = [numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "wd")]
    reasons = zero_skip_candidates(_model(nodes, inits, [1, 2, 6, 6]))
    assert "1 output channel(s) per group" in reasons["dw"]
