"""The ``ai.zapopt::ZeroSkipConv`` contract in code, as the rewrite passes build and read it.

ZeroSkipConv v1 computes ``Y = act(conv(X, W, B) + Skip)`` exactly; a native kernel only
skips the multiply-adds whose input is exactly zero (ReLU zeros). It has no predictor, so
it fits every Conv whose input can be zero, ZAP-eligible or not. ``docs/zap_op.md`` holds
the prose spec; this module is what the zero-skip rule, its expansion and the model-form
conversion share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from zapopt.errors import ZapoptError
from zapopt.ops.spec import DOMAIN, is_zap_node

ZERO_SKIP_OP_TYPE = "ZeroSkipConv"
ZERO_SKIP_VERSION = 1
#: ``activation`` values: no activation, or ReLU clipped at ``clip_max`` (+inf = plain ReLU).
ACTIVATIONS = ("none", "relu")

_INT_ATTRS = {"strides": (2, 1), "pads": (4, 0), "dilations": (2, 1)}


def is_zero_skip_node(node: onnx.NodeProto) -> bool:
    """True for an ``ai.zapopt::ZeroSkipConv`` node."""
    return node.op_type == ZERO_SKIP_OP_TYPE and node.domain == DOMAIN


def is_native_node(node: onnx.NodeProto) -> bool:
    """True for any ``ai.zapopt`` op a native library runs (ZapConv or ZeroSkipConv)."""
    return is_zap_node(node) or is_zero_skip_node(node)


def _ints(name: str, values: Any) -> tuple[int, ...]:
    length, minimum = _INT_ATTRS[name]
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ZapoptError(f"ZeroSkipConv attribute {name} must be a list of ints, got {values!r}") from None
    if len(out) != length or any(v < minimum for v in out):
        raise ZapoptError(f"ZeroSkipConv attribute {name} must be {length} ints >= {minimum}, got {list(out)}")
    return out


@dataclass(frozen=True)
class ZeroSkipAttrs:
    """Validated attributes of one ZeroSkipConv node (pads ``[top, left, bottom, right]``)."""

    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1
    activation: str = "relu"
    clip_max: float = math.inf

    def __post_init__(self) -> None:
        for name in _INT_ATTRS:
            object.__setattr__(self, name, _ints(name, getattr(self, name)))
        if int(self.group) < 1:
            raise ZapoptError(f"ZeroSkipConv attribute group must be >= 1, got {self.group}")
        object.__setattr__(self, "group", int(self.group))
        activation = self.activation.decode() if isinstance(self.activation, bytes) else self.activation
        if activation not in ACTIVATIONS:
            raise ZapoptError(f"ZeroSkipConv activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        object.__setattr__(self, "activation", activation)
        clip_max = float(self.clip_max)
        if math.isnan(clip_max) or clip_max <= 0:
            raise ZapoptError(f"ZeroSkipConv clip_max must be > 0 (+inf for ReLU), got {self.clip_max}")
        object.__setattr__(self, "clip_max", clip_max)

    @property
    def output_can_be_zero(self) -> bool:
        """Whether the next layer's input gets ReLU zeros from this node."""
        return self.activation == "relu"

    def to_onnx_attrs(self) -> dict[str, Any]:
        return {"strides": list(self.strides), "pads": list(self.pads), "dilations": list(self.dilations),
                "group": self.group, "activation": self.activation, "clip_max": self.clip_max}

    @classmethod
    def from_node(cls, node: onnx.NodeProto) -> ZeroSkipAttrs:
        if not is_zero_skip_node(node):
            raise ZapoptError(f"node {node.name!r} is {node.domain}::{node.op_type}, not {DOMAIN}::{ZERO_SKIP_OP_TYPE}")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        unknown = set(attrs) - {"strides", "pads", "dilations", "group", "activation", "clip_max"}
        if unknown:
            raise ZapoptError(f"ZeroSkipConv {node.name!r} has unknown attributes {sorted(unknown)}")
        return cls(**attrs)


def make_zero_skip_node(*, name: str, x: str, w: str, y: str, attrs: ZeroSkipAttrs, b: str = "",
                        skip: str = "") -> onnx.NodeProto:
    """One ZeroSkipConv node (inputs ``X, W, B, Skip``; trailing optional ones dropped)."""
    for label, value in (("x", x), ("w", w), ("y", y)):
        if not value:
            raise ZapoptError(f"make_zero_skip_node: tensor name {label} must not be empty")
    inputs = [x, w] + ([b, skip] if skip else [b] if b else [])
    return helper.make_node(ZERO_SKIP_OP_TYPE, inputs, [y], name=name, domain=DOMAIN, **attrs.to_onnx_attrs())
