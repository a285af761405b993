"""The ``ai.zapopt::ZapConv`` contract in code: names, attributes and node construction.

``docs/zap_op.md`` is the prose version; this module is what the rewrite passes, the
numpy reference and the expansion share, so a node that passes :class:`ZapConvAttrs`
validation is one every implementation accepts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import onnx
from onnx import helper

from zapopt.errors import ZapoptError
from zapopt.ops.patterns import Pattern

DOMAIN = "ai.zapopt"
OP_TYPE = "ZapConv"
VERSION = 1

#: Input slots in order; ``B`` and ``Skip`` are optional (empty name = absent).
INPUT_NAMES = ("X", "W", "B", "PW1", "PB1", "PW2", "PB2", "Skip")
#: Output slots in order; ``Computed`` is optional.
OUTPUT_NAMES = ("Y", "Computed")
#: Metadata key naming the rewrite rule that created a node.
RULE_KEY = "zapopt.rule"
#: What the predictor reads at the pattern positions: the activation ``Full`` (the
#: paper's choice, and the default when the attribute is absent) or the pre-activation
#: ``V``, which also says how far below zero a computed neighbour is.
PREDICTOR_INPUTS = ("activation", "preactivation")
#: What the predictor costs: two depthwise 3x3 convolutions (PW1, PW2, BN folded), i.e.
#: 2 * 9 MACs per output activation it scores.
PREDICTOR_MACS_PER_ACTIVATION = 2 * 3 * 3


def is_zap_node(node: onnx.NodeProto) -> bool:
    """True for an ``ai.zapopt::ZapConv`` node."""
    return node.op_type == OP_TYPE and node.domain == DOMAIN


def _ints(name: str, values: Sequence[Any], length: int, minimum: int) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ZapoptError(f"ZapConv attribute {name} must be a list of ints, got {values!r}") from None
    if len(out) != length or any(v < minimum for v in out):
        raise ZapoptError(
            f"ZapConv attribute {name} must be {length} ints >= {minimum} (2-D convolutions only), got {list(out)}"
        )
    return out


@dataclass(frozen=True)
class ZapConvAttrs:
    """Validated attributes of one ZapConv node (pads are ``[top, left, bottom, right]``)."""

    pattern: Pattern
    threshold: float
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1
    clip_max: float = math.inf
    predictor_input: str = "activation"

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", _ints("strides", self.strides, 2, 1))
        object.__setattr__(self, "pads", _ints("pads", self.pads, 4, 0))
        object.__setattr__(self, "dilations", _ints("dilations", self.dilations, 2, 1))
        if not isinstance(self.pattern, Pattern):
            raise TypeError(f"ZapConvAttrs.pattern must be a Pattern, got {type(self.pattern).__name__}")
        if int(self.group) < 1:
            raise ZapoptError(f"ZapConv attribute group must be >= 1, got {self.group}")
        object.__setattr__(self, "group", int(self.group))
        clip_max = float(self.clip_max)
        if math.isnan(clip_max) or clip_max <= 0:
            raise ZapoptError(f"ZapConv clip_max must be > 0 (+inf for ReLU), got {self.clip_max}")
        object.__setattr__(self, "clip_max", clip_max)
        threshold = float(self.threshold)
        if math.isnan(threshold):
            raise ZapoptError("ZapConv threshold must be a number or +-inf, got NaN")
        object.__setattr__(self, "threshold", threshold)
        if isinstance(self.predictor_input, bytes):
            object.__setattr__(self, "predictor_input", self.predictor_input.decode("utf-8", "replace"))
        if self.predictor_input not in PREDICTOR_INPUTS:
            raise ZapoptError(
                f"ZapConv predictor_input must be one of {', '.join(PREDICTOR_INPUTS)}, got {self.predictor_input!r}"
            )

    def to_onnx_attrs(self) -> dict[str, Any]:
        """Keyword attributes for :func:`onnx.helper.make_node`."""
        return {
            "strides": list(self.strides),
            "pads": list(self.pads),
            "dilations": list(self.dilations),
            "group": self.group,
            "clip_max": self.clip_max,
            "threshold": self.threshold,
            "predictor_input": self.predictor_input,
            **self.pattern.to_attrs(),
        }

    @classmethod
    def from_dict(cls, attrs: dict[str, Any]) -> ZapConvAttrs:
        """Build from decoded attribute values (missing optional ones take their defaults)."""
        unknown = set(attrs) - {
            "strides", "pads", "dilations", "group", "clip_max", "threshold",
            "pattern", "pattern_shape", "pattern_name", "predictor_input",
        }
        if unknown:
            raise ZapoptError(f"ZapConv has unknown attributes {sorted(unknown)}")
        for required in ("pattern", "pattern_shape", "threshold"):
            if required not in attrs:
                raise ZapoptError(f"ZapConv is missing its required attribute {required!r}")
        pattern = Pattern.from_attrs(attrs["pattern"], attrs["pattern_shape"], attrs.get("pattern_name", ""))
        return cls(
            pattern=pattern,
            threshold=attrs["threshold"],
            strides=attrs.get("strides", (1, 1)),
            pads=attrs.get("pads", (0, 0, 0, 0)),
            dilations=attrs.get("dilations", (1, 1)),
            group=attrs.get("group", 1),
            clip_max=attrs.get("clip_max", math.inf),
            predictor_input=attrs.get("predictor_input", "activation"),
        )

    @classmethod
    def from_node(cls, node: onnx.NodeProto) -> ZapConvAttrs:
        """Read and validate the attributes of a ZapConv node."""
        if not is_zap_node(node):
            raise ZapoptError(f"node {node.name!r} is {node.domain}::{node.op_type}, not {DOMAIN}::{OP_TYPE}")
        return cls.from_dict({a.name: helper.get_attribute_value(a) for a in node.attribute})


def make_zap_node(
    *,
    name: str,
    x: str,
    w: str,
    pw1: str,
    pb1: str,
    pw2: str,
    pb2: str,
    y: str,
    attrs: ZapConvAttrs,
    b: str = "",
    skip: str = "",
    computed: str = "",
) -> onnx.NodeProto:
    """One ZapConv node; optional trailing inputs/outputs are dropped, middle ones stay ''."""
    for label, value in (("x", x), ("w", w), ("pw1", pw1), ("pb1", pb1), ("pw2", pw2), ("pb2", pb2), ("y", y)):
        if not value:
            raise ZapoptError(f"make_zap_node: tensor name {label} must not be empty")
    inputs = [x, w, b, pw1, pb1, pw2, pb2] + ([skip] if skip else [])
    outputs = [y] + ([computed] if computed else [])
    return helper.make_node(OP_TYPE, inputs, outputs, name=name, domain=DOMAIN, **attrs.to_onnx_attrs())
