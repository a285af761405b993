"""The portable expansion agrees with the numpy reference (the truth) on random layers.

Agreement rule: onnxruntime's float32 convolutions round differently from the reference
(float64 accumulation, one rounding), so the predictor score Z differs by a few ulps.
``Computed`` must match everywhere except where the reference's Z lies within
``Z_EPS * (1 + max|Z|)`` of the threshold; ``Y`` must match to float32 accumulation
tolerance where both computed the activation, and be exactly 0 where neither did.
"""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

from tests.zap_builders import assert_agrees, feeds_of, ort_run, random_zap_case, trace_of, zap_model
from zapopt.errors import ZapoptError
from zapopt.ops import ZapConvAttrs, get_pattern, is_zap_node
from zapopt.rewrite import ExpandZapToOnnx, mask_output_name, rule_of

LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


@pytest.mark.parametrize("seed", range(120))
def test_expansion_matches_reference_on_random_layers(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    case = random_zap_case(rng)
    opset = int(rng.choice([11, 13, 17, 21, 23]))
    expanded = ExpandZapToOnnx(expose_masks=True)(zap_model(case, opset=opset)).model
    for level in LEVELS.values():
        y, computed = ort_run(expanded, feeds_of(case), level)
        assert_agrees(case, y, computed)


@pytest.mark.parametrize("seed", range(12))
def test_expansion_with_dynamic_spatial_size_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(5000 + seed)
    case = random_zap_case(rng)
    expanded = ExpandZapToOnnx(expose_masks=True)(zap_model(case, opset=11, dynamic=True)).model
    assert any(n.op_type == "Tile" for n in expanded.graph.node), "dynamic sizes must tile the pattern at run time"
    y, computed = ort_run(expanded, feeds_of(case), LEVELS["all"])
    assert_agrees(case, y, computed)


def test_expansion_uses_only_standard_ops_and_tags_them() -> None:
    case = random_zap_case(np.random.default_rng(7))
    model = zap_model(case)
    expanded = ExpandZapToOnnx()(model)
    assert expanded.modified
    assert all(n.domain == "" for n in expanded.model.graph.node)
    assert all(rule_of(n) == "ExpandZapToOnnx" for n in expanded.model.graph.node)
    assert all(op.domain != "ai.zapopt" for op in expanded.model.opset_import)
    assert [o.name for o in expanded.model.graph.output] == ["Y"]
    assert any(is_zap_node(n) for n in model.graph.node), "the input model must stay untouched"


def test_declared_computed_output_keeps_its_name() -> None:
    case = random_zap_case(np.random.default_rng(11))
    expanded = ExpandZapToOnnx()(zap_model(case, declare_computed=True)).model
    assert [o.name for o in expanded.graph.output] == ["Y", "Computed"]
    y, computed = ort_run(expanded, feeds_of(case))
    assert_agrees(case, y, computed)


def test_exposed_mask_is_named_after_the_layer() -> None:
    case = random_zap_case(np.random.default_rng(12))
    expanded = ExpandZapToOnnx(expose_masks=True)(zap_model(case)).model
    assert [o.name for o in expanded.graph.output] == ["Y", mask_output_name("zap0")]


def test_threshold_extremes_compute_everything_or_only_the_pattern() -> None:
    case = random_zap_case(np.random.default_rng(3))
    base = case["attrs"]
    for threshold, expect_all in ((-math.inf, True), (math.inf, False)):
        attrs = ZapConvAttrs(
            pattern=get_pattern("checkerboard"), threshold=threshold, strides=base.strides, pads=base.pads,
            dilations=base.dilations, group=base.group, clip_max=base.clip_max,
        )
        case_t = {"arrays": case["arrays"], "attrs": attrs}
        expanded = ExpandZapToOnnx(expose_masks=True)(zap_model(case_t)).model
        y, computed = ort_run(expanded, feeds_of(case_t))
        trace = trace_of(case_t)
        if expect_all:
            assert computed.all()
            np.testing.assert_allclose(y, trace.Full, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(computed, np.broadcast_to(trace.S, computed.shape))


def test_old_opset_is_refused_with_advice() -> None:
    case = random_zap_case(np.random.default_rng(4))
    with pytest.raises(ZapoptError, match="version_converter"):
        ExpandZapToOnnx()(zap_model(case, opset=10))


def test_model_without_zap_nodes_is_unmodified() -> None:
    case = random_zap_case(np.random.default_rng(5))
    expanded = ExpandZapToOnnx()(zap_model(case)).model
    again = ExpandZapToOnnx()(expanded)
    assert not again.modified


def test_mask_name_clash_is_reported() -> None:
    from onnx import helper

    case = random_zap_case(np.random.default_rng(13))
    model = zap_model(case)
    model.graph.node.append(helper.make_node("Identity", ["Y"], [mask_output_name("zap0")]))
    with pytest.raises(ZapoptError, match="zap0.computed"):
        ExpandZapToOnnx(expose_masks=True)(model)
