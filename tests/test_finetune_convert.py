"""ONNX (with ZapConv) -> torch: same outputs and masks as onnxruntime, gradients only where computed."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from gradtools._hooks import attach_output_grad_transform
from tests.finetune_models import zap_reference_model
from tests.zap_builders import chain_model, random_zap_case, trace_of
from zapopt.data import load_embedded_fashion_mnist
from zapopt.errors import ZapoptError
from zapopt.finetuning.convert import export_weights, to_torch
from zapopt.finetuning.zap_module import ZapConv2d
from zapopt.runtime import make_session, prepare


def _images(n: int) -> np.ndarray:
    x, _ = load_embedded_fashion_mnist("test")
    return (x[:n, None].astype(np.float32) / 255)


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_forward_and_masks_equal_onnxruntime(name: str) -> None:
    zap = zap_reference_model(name)
    prepared = prepare(zap, expose_masks=True)
    session = make_session(prepared.model)
    x = _images(16)
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(None, {"input": x})))
    module = to_torch(zap).eval()
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    want = results[prepared.output_names[0]]
    assert np.abs(logits - want).max() <= 1e-4 * (1 + np.abs(want).max())
    layers = module.zap_layers()
    assert set(layers) == set(prepared.mask_outputs) and len(layers) >= 10
    skipped = 0
    for layer, output in prepared.mask_outputs.items():
        ours = layers[layer].last_computed.numpy()
        theirs = results[output]
        assert ours.shape == theirs.shape
        assert np.mean(ours != theirs) <= 1e-4, layer  # only ties at the threshold may differ
        skipped += int((~theirs).sum())
    assert skipped > 0  # the masks really drop activations


def _zap_module(case: dict) -> ZapConv2d:
    a = case["arrays"]
    return ZapConv2d(a["W"], a["B"], (a["PW1"], a["PB1"], a["PW2"], a["PB2"]), case["attrs"])


@pytest.mark.parametrize("seed", range(40))
def test_zap_module_matches_reference_op(seed: int) -> None:
    """Strides, pads (asymmetric too), groups, Skip, clip_max and both predictor inputs."""
    case = random_zap_case(np.random.default_rng(seed))
    trace = trace_of(case)
    arrays = case["arrays"]
    zap = _zap_module(case)
    skip = None if arrays["Skip"] is None else torch.from_numpy(arrays["Skip"])
    with torch.no_grad():
        y = zap(torch.from_numpy(arrays["X"]), skip).numpy()
    computed = zap.last_computed.numpy()
    near = np.abs(trace.Z - np.float32(case["attrs"].threshold)) <= 1e-4 * (1 + np.abs(trace.Z).max())
    assert np.all((computed == trace.Computed) | near)
    both = computed & trace.Computed
    assert np.allclose(y[both], trace.Y[both], rtol=1e-5, atol=2e-6 * (1 + np.abs(trace.Full).max()))
    assert np.all(y[~computed] == 0)


@pytest.mark.parametrize("clip_max", [math.inf, 0.5])
def test_gradient_reaches_only_computed_activations(clip_max: float) -> None:
    rng = np.random.default_rng(3)
    while True:
        case = random_zap_case(rng)
        if math.isfinite(case["attrs"].threshold) and case["arrays"]["Skip"] is None:
            break
    from dataclasses import replace

    case["attrs"] = replace(case["attrs"], clip_max=clip_max)
    zap = _zap_module(case)
    seen = {}
    attach_output_grad_transform(zap.conv, lambda g: seen.setdefault("grad", g.clone()))
    x = torch.from_numpy(case["arrays"]["X"])
    zap(x).sum().backward()
    computed = zap.last_computed
    v = zap.padded(x).detach()
    passing = computed & (v > 0) & (v < clip_max)
    assert torch.all(seen["grad"][~computed] == 0)
    assert torch.all(seen["grad"][passing] == 1)
    assert torch.all(seen["grad"][~passing] == 0)
    assert zap.conv.weight.grad is not None and zap.pw1.grad is None  # predictor frozen


def test_export_writes_trained_weights_back() -> None:
    zap = zap_reference_model("vgg16")
    module = to_torch(zap)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.01).add_(0.001)
    exported = export_weights(module, zap)
    onnx.checker.check_model(exported)
    assert [n.name for n in exported.graph.node] == [n.name for n in zap.graph.node]
    assert [list(n.attribute) for n in exported.graph.node] == [list(n.attribute) for n in zap.graph.node]
    x = _images(8)
    module.eval()
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    theirs = make_session(prepare(exported).model).run(None, {"input": x})[0]
    before = make_session(prepare(zap).model).run(None, {"input": x})[0]
    assert np.abs(ours - theirs).max() <= 1e-4 * (1 + np.abs(theirs).max())
    assert np.abs(before - theirs).max() > 1e-2  # the weights really changed
    predictors = {i.name for n in zap.graph.node if n.op_type == "ZapConv" for i in zap.graph.initializer
                  if i.name in n.input[3:7]}
    old = {i.name: numpy_helper.to_array(i) for i in zap.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in exported.graph.initializer}
    assert predictors and all(np.array_equal(old[p], new[p]) for p in predictors)


def _converted_equals_onnxruntime(model: onnx.ModelProto, reference: onnx.ModelProto, *, seed: int):
    """to_torch(model) on a random [1, 3, 8, 8] input equals onnxruntime's run of ``reference``."""
    x = np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = make_session(reference).run(None, {"input": x})[0]
    module = to_torch(model).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)
    return module


def test_batchnorm_clip_and_residual_model() -> None:
    model = chain_model()
    conv3 = next(n for n in model.graph.node if n.name == "conv3")
    del conv3.attribute[:]
    conv3.attribute.extend([helper.make_attribute("strides", [2, 2]), helper.make_attribute("pads", [0, 0, 1, 1])])
    module = _converted_equals_onnxruntime(model, model, seed=0)
    names = {s.initializer for s in module.sources}
    assert {"w1", "b1", "w2", "w3", "b3", "bn1.scale", "bn1.bias"} <= names
    assert "bn1.mean" not in names and "zero" not in names


def _single_op_model(op: str, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["input"], ["out"], name="odd", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unknown_op_is_refused_by_name() -> None:
    with pytest.raises(ZapoptError, match="LeakyRelu"):
        to_torch(_single_op_model("LeakyRelu"))


def test_unsupported_attribute_is_refused_by_node() -> None:
    with pytest.raises(ZapoptError, match="auto_pad"):
        to_torch(_single_op_model("MaxPool", kernel_shape=[2, 2], auto_pad="SAME_UPPER"))


def test_zap_module_type_is_conv_for_gradtools() -> None:
    zap = zap_reference_model("resnet18")
    module = to_torch(zap)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    zaps = [m for m in module.modules() if isinstance(m, ZapConv2d)]
    assert len(zaps) >= 10 and all(isinstance(z.conv, torch.nn.Conv2d) for z in zaps)
    assert len(convs) == sum(1 for n in zap.graph.node if n.op_type in ("Conv", "ZapConv"))


def test_zero_skip_convs_of_the_default_native_output_convert_and_export() -> None:
    """optimize's default native form also holds ZeroSkipConv nodes (residual Skip, ReLU6 clip):
    the torch module equals the original, and trained weights go back into their inputs."""
    from zapopt.ops.spec import is_zero_skip_node
    from zapopt.rewrite import ReplaceWithZeroSkip

    original = chain_model()
    model = ReplaceWithZeroSkip()(original).model
    assert sum(is_zero_skip_node(n) for n in model.graph.node) == 2
    module = _converted_equals_onnxruntime(model, original, seed=1)
    zero_skip_weights = {n.input[1] for n in model.graph.node if is_zero_skip_node(n)}
    assert zero_skip_weights <= {s.initializer for s in module.sources}
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.5)
    exported = export_weights(module, model)
    inits = {i.name: numpy_helper.to_array(i) for i in exported.graph.initializer}
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert all(np.allclose(inits[name], before[name] + 0.5) for name in zero_skip_weights)
