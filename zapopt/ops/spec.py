"""The ``ai.zapopt`` op contracts in code: names, attributes and node construction.

``docs/zap_op.md`` is the prose version; this module is what the rewrite passes, the
numpy reference, the expansion and the native kernel's tests share, so a node that passes
:class:`ZapConvAttrs` (or :class:`ZeroSkipConvAttrs`) validation is one every
implementation accepts.
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
#: The Conv that skips the multiply-adds of zero inputs (every output computed, no predictor).
ZERO_SKIP_OP_TYPE = "ZeroSkipConv"
#: ZeroSkipConv's input slots; ``B`` and ``Skip`` are optional (empty name = absent).
ZERO_SKIP_INPUT_NAMES = ("X", "W", "B", "Skip")
#: ZeroSkipConv's ``activation`` values: ``relu`` clips to ``[0, clip_max]``, ``none`` keeps V.
ZERO_SKIP_ACTIVATIONS = ("none", "relu")
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


def is_zero_skip_node(node: onnx.NodeProto) -> bool:
    """True for an ``ai.zapopt::ZeroSkipConv`` node."""
    return node.op_type == ZERO_SKIP_OP_TYPE and node.domain == DOMAIN


def _ints(name: str, values: Sequence[Any], length: int, minimum: int, op: str = OP_TYPE) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ZapoptError(f"{op} attribute {name} must be a list of ints, got {values!r}") from None
    if len(out) != length or any(v < minimum for v in out):
        raise ZapoptError(
            f"{op} attribute {name} must be {length} ints >= {minimum} (2-D convolutions only), got {list(out)}"
        )
    return out


def _normalize_conv_fields(attrs: Any, op: str) -> None:
    """Validate and normalize the Conv-like fields (strides, pads, dilations, group, clip_max) in place."""
    object.__setattr__(attrs, "strides", _ints("strides", attrs.strides, 2, 1, op))
    object.__setattr__(attrs, "pads", _ints("pads", attrs.pads, 4, 0, op))
    object.__setattr__(attrs, "dilations", _ints("dilations", attrs.dilations, 2, 1, op))
    if int(attrs.group) < 1:
        raise ZapoptError(f"{op} attribute group must be >= 1, got {attrs.group}")
    object.__setattr__(attrs, "group", int(attrs.group))
    clip_max = float(attrs.clip_max)
    if math.isnan(clip_max) or clip_max <= 0:
        raise ZapoptError(f"{op} clip_max must be > 0 (+inf for ReLU), got {attrs.clip_max}")
    object.__setattr__(attrs, "clip_max", clip_max)


def _conv_onnx_attrs(attrs: Any) -> dict[str, Any]:
    return {
        "strides": list(attrs.strides),
        "pads": list(attrs.pads),
        "dilations": list(attrs.dilations),
        "group": attrs.group,
        "clip_max": attrs.clip_max,
    }


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
        _normalize_conv_fields(self, OP_TYPE)
        if not isinstance(self.pattern, Pattern):
            raise TypeError(f"ZapConvAttrs.pattern must be a Pattern, got {type(self.pattern).__name__}")
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
            **_conv_onnx_attrs(self),
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


@dataclass(frozen=True)
class ZeroSkipConvAttrs:
    """Validated attributes of one ZeroSkipConv node (pads are ``[top, left, bottom, right]``).

    ``clip_max`` applies to ``activation="relu"`` only (``6`` = ReLU6); with ``"none"`` it
    must stay ``+inf``, so a node never carries a setting that does nothing.
    """

    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1
    activation: str = "relu"
    clip_max: float = math.inf

    def __post_init__(self) -> None:
        _normalize_conv_fields(self, ZERO_SKIP_OP_TYPE)
        if isinstance(self.activation, bytes):
            object.__setattr__(self, "activation", self.activation.decode("utf-8", "replace"))
        if self.activation not in ZERO_SKIP_ACTIVATIONS:
            raise ZapoptError(
                f"ZeroSkipConv activation must be one of {', '.join(ZERO_SKIP_ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.activation == "none" and math.isfinite(self.clip_max):
            raise ZapoptError("ZeroSkipConv clip_max applies only to activation 'relu'; leave it +inf with 'none'")

    def to_onnx_attrs(self) -> dict[str, Any]:
        """Keyword attributes for :func:`onnx.helper.make_node`."""
        return {**_conv_onnx_attrs(self), "activation": self.activation}

    @classmethod
    def from_dict(cls, attrs: dict[str, Any]) -> ZeroSkipConvAttrs:
        """Build from decoded attribute values (missing ones take their defaults)."""
        unknown = set(attrs) - {"strides", "pads", "dilations", "group", "activation", "clip_max"}
        if unknown:
            raise ZapoptError(f"ZeroSkipConv has unknown attributes {sorted(unknown)}")
        return cls(**attrs)

    @classmethod
    def from_node(cls, node: onnx.NodeProto) -> ZeroSkipConvAttrs:
        """Read and validate the attributes of a ZeroSkipConv node."""
        if not is_zero_skip_node(node):
            raise ZapoptError(
                f"node {node.name!r} is {node.domain}::{node.op_type}, not {DOMAIN}::{ZERO_SKIP_OP_TYPE}"
            )
        return cls.from_dict({a.name: helper.get_attribute_value(a) for a in node.attribute})


def make_zero_skip_node(
    *, name: str, x: str, w: str, y: str, attrs: ZeroSkipConvAttrs, b: str = "", skip: str = ""
) -> onnx.NodeProto:
    """One ZeroSkipConv node; a trailing absent ``Skip`` is dropped, an absent ``B`` stays ''."""
    for label, value in (("x", x), ("w", w), ("y", y)):
        if not value:
            raise ZapoptError(f"make_zero_skip_node: tensor name {label} must not be empty")
    inputs = [x, w, b] + ([skip] if skip else [])
    return helper.make_node(ZERO_SKIP_OP_TYPE, inputs, [y], name=name, domain=DOMAIN, **attrs.to_onnx_attrs())


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
