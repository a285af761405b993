"""ZapConv attribute validation and node construction."""
from __future__ import annotations

import math

import pytest
from onnx import helper

from zapopt.errors import ZapoptError
from zapopt.ops import DOMAIN, OP_TYPE, VERSION, ZapConvAttrs, get_pattern, is_zap_node, make_zap_node

NAMES = dict(x="X", w="W", pw1="PW1", pb1="PB1", pw2="PW2", pb2="PB2", y="Y")


def test_constants() -> None:
    assert (DOMAIN, OP_TYPE, VERSION) == ("ai.zapopt", "ZapConv", 1)


def test_node_round_trips_its_attributes() -> None:
    attrs = ZapConvAttrs(
        pattern=get_pattern("tile5x5-60"), threshold=0.25, strides=(2, 1), pads=(1, 0, 2, 1),
        dilations=(1, 2), group=2, clip_max=6.0, predictor_input="preactivation",
    )
    node = make_zap_node(name="layer", attrs=attrs, skip="S", **NAMES)
    assert is_zap_node(node) and node.domain == DOMAIN
    assert list(node.input) == ["X", "W", "", "PW1", "PB1", "PW2", "PB2", "S"]
    assert list(node.output) == ["Y"]
    assert ZapConvAttrs.from_node(node) == attrs


def test_infinite_threshold_and_clip_survive() -> None:
    attrs = ZapConvAttrs(pattern=get_pattern("checkerboard"), threshold=-math.inf)
    back = ZapConvAttrs.from_node(make_zap_node(name="n", attrs=attrs, computed="C", **NAMES))
    assert back.threshold == -math.inf and back.clip_max == math.inf


def test_missing_required_attribute_is_named() -> None:
    node = helper.make_node(OP_TYPE, ["X"], ["Y"], domain=DOMAIN, pattern=[1], pattern_shape=[1, 1])
    with pytest.raises(ZapoptError, match="threshold"):
        ZapConvAttrs.from_node(node)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(strides=(0, 1)),
        dict(pads=(1, 1)),
        dict(pads=(-1, 0, 0, 0)),
        dict(dilations=(1, 1, 1)),
        dict(group=0),
        dict(clip_max=0.0),
        dict(clip_max=math.nan),
        dict(threshold=math.nan),
        dict(predictor_input="relu"),
    ],
)
def test_invalid_attributes_are_rejected(kwargs: dict) -> None:
    base = dict(pattern=get_pattern("all"), threshold=0.0)
    with pytest.raises(ZapoptError):
        ZapConvAttrs(**{**base, **kwargs})


def test_pattern_must_be_a_pattern() -> None:
    with pytest.raises(TypeError):
        ZapConvAttrs(pattern="checkerboard", threshold=0.0)  # type: ignore[arg-type]


def test_empty_required_tensor_name_is_rejected() -> None:
    with pytest.raises(ZapoptError, match="pw1"):
        make_zap_node(name="n", attrs=ZapConvAttrs(pattern=get_pattern("all"), threshold=0.0), **{**NAMES, "pw1": ""})


def test_absent_predictor_input_means_the_papers_activation_input() -> None:
    node = helper.make_node(OP_TYPE, ["X"], ["Y"], domain=DOMAIN, pattern=[1, 0], pattern_shape=[1, 2],
                            threshold=0.0)
    assert ZapConvAttrs.from_node(node).predictor_input == "activation"
    node = helper.make_node(OP_TYPE, ["X"], ["Y"], domain=DOMAIN, pattern=[1, 0], pattern_shape=[1, 2],
                            threshold=0.0, predictor_input="preactivation")
    assert ZapConvAttrs.from_node(node).predictor_input == "preactivation"
