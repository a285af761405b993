"""The one ``Conv [+BatchNormalization] [+Add] + Relu/Clip(0, c)`` pattern.

Analysis and rewrite read the same pattern (in the spirit of onnxscript's rewriter:
a pattern, checks that each return a reason instead of a yes/no, then a rewrite).
``match_conv_chain`` follows a Conv's output as far as the pattern goes and returns a
``ConvChain``: the nodes it found and, when it does not match, every reason why. Analysis
reports the reasons; a rewrite calls ``ConvChain.require`` and turns them into an error.
Rules built on it (ZapConv, and others that start at a Conv) add their own checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from zapopt.errors import ZapoptError
from zapopt.graph.index import GraphIndex, attribute
from zapopt.graph.shapes import InferredShapes

_DEFAULT_DOMAINS = ("", "ai.onnx")
_BN_PARAM_NAMES = ("scale", "B", "input_mean", "input_var")

#: Ops that can sit between a Conv and its activation inside the chain, or end it.
_CHAIN_OPS = frozenset({"BatchNormalization", "Add", "Relu", "Clip"})


def is_onnx_op(node: onnx.NodeProto | None, op_type: str) -> bool:
    """A node of the standard ONNX domain with this op type (custom look-alikes are not)."""
    return node is not None and node.op_type == op_type and node.domain in _DEFAULT_DOMAINS


@dataclass(frozen=True)
class ConvChain:
    """What follows one Conv, as far as the pattern matched (node positions in the index's
    graph), and the reasons it does not match; ``reasons`` is empty iff it matched.

    ``skip_input`` is the residual Add's other input; ``preactivation`` the tensor the
    activation reads (conv, BN or Add output); ``output`` the activation's output.
    """

    conv: int
    bn: int | None = None
    add: int | None = None
    skip_input: str | None = None
    act: int | None = None
    clip_max: float = math.inf
    preactivation: str | None = None
    output: str | None = None
    reasons: tuple[str, ...] = ()

    @property
    def matched(self) -> bool:
        return not self.reasons

    @property
    def positions(self) -> list[int]:
        """The chain's nodes, in graph order."""
        return [k for k in (self.conv, self.bn, self.add, self.act) if k is not None]

    def require(self, label: str, target: str = "one ZapConv") -> ConvChain:
        """This chain if it matched, else a ZapoptError that gives every reason."""
        if self.reasons:
            raise ZapoptError(f"Conv {label!r} cannot become {target}: {'; '.join(self.reasons)}")
        return self


def sole_reader(index: GraphIndex, tensor: str, owner: str) -> tuple[int | None, str | None]:
    """(position of the one node reading ``tensor``, None), or (None, why there is not
    exactly one) when it is also a graph output, read inside a subgraph, unused or shared."""
    readers = index.consumer_nodes(tensor)
    if tensor in index.graph_outputs:
        return None, f"the output of {owner} (tensor {tensor!r}) is a graph output, used before any ReLU"
    if tensor in index.used_in_subgraphs:
        return None, f"the output of {owner} (tensor {tensor!r}) is read inside a subgraph before the ReLU"
    if not readers:
        return None, f"no ReLU after it (the output of {owner} is unused)"
    if len(readers) > 1:
        names = ", ".join(f"{index.node(r).op_type} {index.names[r]!r}" for r in readers)
        if any(index.node(r).op_type in _CHAIN_OPS for r in readers):
            return None, (f"the output of {owner} (tensor {tensor!r}) is used elsewhere before the ReLU "
                          f"(fan-out to {names})")
        return None, f"no ReLU after it (the output of {owner} goes to {names})"
    return readers[0], None


def _next_in_chain(index: GraphIndex, tensor: str, owner: str, reasons: list[str]) -> int | None:
    reader, reason = sole_reader(index, tensor, owner)
    if reason is not None:
        reasons.append(reason)
    return reader


def batchnorm_reasons(index: GraphIndex, bn_position: int) -> list[str]:
    """Why this BatchNormalization cannot be folded into the Conv before it (empty: it can)."""
    bn = index.node(bn_position)
    name = index.names[bn_position]
    reasons = []
    non_constant = [f"{role} {tensor!r}" for role, tensor in zip(_BN_PARAM_NAMES, bn.input[1:5])
                    if not index.is_constant(tensor)]
    if non_constant:
        reasons.append(f"BatchNormalization {name!r} has non-constant params ({', '.join(non_constant)}), "
                       f"so it cannot be folded into the conv")
    if attribute(bn, "training_mode", 0):
        reasons.append(f"BatchNormalization {name!r} is in training mode; export the model in eval mode")
    if any(out and index.in_use(out) for out in bn.output[1:]):
        reasons.append(f"BatchNormalization {name!r} has its running statistics outputs in use")
    return reasons


def _clip_bounds(index: GraphIndex, clip: onnx.NodeProto, name: str,
                 reasons: list[str]) -> tuple[float | None, float | None]:
    """(lower, upper) bound of a Clip; a missing bound is -inf / +inf. Opset < 11 keeps the
    bounds in attributes; newer opsets take optional inputs (initializers or Constant
    nodes). A bound computed at run time is recorded as a reason and returned as None."""
    bounds: list[float | None] = [-math.inf, math.inf]
    for slot, attr_name in enumerate(("min", "max")):
        from_attr = attribute(clip, attr_name)
        if from_attr is not None:
            bounds[slot] = float(from_attr)
        elif len(clip.input) > slot + 1 and clip.input[slot + 1]:
            tensor = clip.input[slot + 1]
            bounds[slot] = index.scalar(tensor)
            if bounds[slot] is None:
                reasons.append(f"Clip {name!r} has a non-constant {attr_name} ({tensor!r})")
    return bounds[0], bounds[1]


def activation_check(index: GraphIndex, position: int, owner: str) -> tuple[float, list[str]]:
    """(clip_max, reasons) for the node reading ``owner``'s output: Relu (clip_max +inf) or
    Clip(min=0, max>0) qualify; anything else gives a reason."""
    node = index.node(position)
    name = index.names[position]
    if is_onnx_op(node, "Relu"):
        return math.inf, []
    if not is_onnx_op(node, "Clip"):
        kind = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        return math.inf, [f"no ReLU after it (the output of {owner} goes to {kind} {name!r}, "
                          f"not Relu or Clip(min=0))"]
    reasons: list[str] = []
    low, high = _clip_bounds(index, node, name, reasons)
    if low == -math.inf:
        reasons.append(f"Clip {name!r} has no lower bound, so it is not ReLU-like")
    elif low is not None and low != 0.0:
        reasons.append(f"Clip {name!r} has min {low:g}, not 0, so it is not ReLU-like")
    if high is not None and not high > 0.0:
        reasons.append(f"Clip {name!r} has max {high:g}, so its output is constant")
    return (math.inf if high is None else float(high)), reasons


def _residual_reasons(shapes: InferredShapes, branch: str, skip: str, total: str, add_name: str) -> list[str]:
    out = shapes.static_shape(total)
    if out is None:
        return [f"no static output shape for Add {add_name!r}"]
    return [f"residual Add {add_name!r} broadcasts {tensor!r} ({shapes.describe(tensor)}) "
            f"to {shapes.describe(total)}"
            for tensor in (branch, skip) if shapes.static_shape(tensor) != out]


def match_conv_chain(index: GraphIndex, conv: int, shapes: InferredShapes | None = None) -> ConvChain:
    """Follow the output of the Conv at position ``conv`` through an optional foldable
    BatchNormalization and an optional residual Add to a ReLU-like activation; record every
    deviation from that pattern as a reason. With ``shapes``, a residual Add must also add
    two tensors of one static shape (no broadcasting)."""
    node = index.node(conv)
    if not is_onnx_op(node, "Conv"):
        return ConvChain(conv=conv, reasons=(
            f"node {index.names[conv]!r} is {node.domain}::{node.op_type}, not an ONNX Conv",))
    reasons: list[str] = []
    bn = add = act = None
    skip_input = output = preactivation = None
    clip_max = math.inf
    tensor, owner = node.output[0], f"Conv {index.names[conv]!r}"
    reader = _next_in_chain(index, tensor, owner, reasons)
    if reader is not None and is_onnx_op(index.node(reader), "BatchNormalization") \
            and index.node(reader).input[0] == tensor:
        bn = reader
        reasons.extend(batchnorm_reasons(index, bn))
        tensor, owner = index.node(bn).output[0], f"BatchNormalization {index.names[bn]!r}"
        reader = _next_in_chain(index, tensor, owner, reasons)
    if reader is not None and is_onnx_op(index.node(reader), "Add"):
        add, add_node, add_name = reader, index.node(reader), index.names[reader]
        others = [t for t in add_node.input if t != tensor]
        if len(add_node.input) != 2 or len(others) != 1:
            reasons.append(f"Add {add_name!r} adds the conv output to itself, so it is not a residual")
        else:
            skip_input = others[0]
            if shapes is not None:
                reasons.extend(_residual_reasons(shapes, tensor, skip_input, add_node.output[0], add_name))
        tensor, owner = add_node.output[0], f"Add {add_name!r}"
        reader = _next_in_chain(index, tensor, owner, reasons)
    if reader is not None:
        reader_clip_max, act_reasons = activation_check(index, reader, owner)
        reasons.extend(act_reasons)
        if is_onnx_op(index.node(reader), "Relu") or is_onnx_op(index.node(reader), "Clip"):
            act, clip_max = reader, reader_clip_max
            preactivation, output = tensor, index.node(reader).output[0]
    return ConvChain(conv=conv, bn=bn, add=add, skip_input=skip_input, act=act, clip_max=clip_max,
                     preactivation=preactivation, output=output, reasons=tuple(reasons))
