"""Which Convs a ZAP layer can replace, and why the others cannot.

A ZAP layer computes Conv [+ folded BatchNorm] [+ residual Add] + ReLU-like clip as one
node and skips output activations predicted to be zero. So a Conv qualifies only when its
output flows, with no other reader, into that exact chain, and when the predictor is
cheap compared with the conv work it can skip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from zapopt.graph.index import GraphIndex, attribute
from zapopt.graph.shapes import InferredShapes

#: Predictor cost: two depthwise 3x3 convs (BN folded) = 2 * 9 MACs per output activation.
PREDICTOR_MACS_PER_OUTPUT = 18

#: Largest predictor cost, as a share of the conv's own MACs per output activation
#: ((C_in/group) * kH * kW), for which a layer is eligible. Why a quarter: with the paper's
#: patterns 33-67 % of positions are computed up front anyway, and of the predicted rest
#: typically about half are zero, so ZAP skips roughly 15-35 % of a layer's work. A predictor
#: costing more than 25 % of the conv rarely pays for itself. In practice: a 3x3 conv needs
#: C_in/group >= 8, a 1x1 conv C_in/group >= 72; depthwise convs (200 %) never qualify.
MAX_PREDICTOR_COST_SHARE = 0.25

_BN_PARAM_NAMES = ("scale", "B", "input_mean", "input_var")

#: Ops that can sit between a Conv and its activation inside one ZAP layer, or end it.
_CHAIN_OPS = frozenset({"BatchNormalization", "Add", "Relu", "Clip"})


@dataclass
class ActivationChain:
    """What follows one Conv, as far as the ZAP pattern matched, plus what went wrong."""

    bn: int | None = None
    add: int | None = None
    skip_input: str | None = None
    act: int | None = None
    clip_max: float = math.inf
    preactivation: str | None = None
    output: str | None = None
    problems: list[str] = field(default_factory=list)


def _single_reader(index: GraphIndex, tensor: str, owner: str, chain: ActivationChain) -> int | None:
    """The one node reading ``tensor``; record a fan-out problem when there are more."""
    readers = index.consumer_nodes(tensor)
    if tensor in index.graph_outputs:
        chain.problems.append(
            f"the output of {owner} (tensor {tensor!r}) is a graph output, used before any ReLU")
        return None
    if not readers:
        chain.problems.append(f"no ReLU after it (the output of {owner} is unused)")
        return None
    if len(readers) > 1:
        names = ", ".join(f"{index.node(r).op_type} {index.names[r]!r}" for r in readers)
        if any(index.node(r).op_type in _CHAIN_OPS for r in readers):
            chain.problems.append(
                f"the output of {owner} (tensor {tensor!r}) is used elsewhere before the ReLU "
                f"(fan-out to {names})")
        else:
            chain.problems.append(f"no ReLU after it (the output of {owner} goes to {names})")
        return None
    return readers[0]


def _check_batchnorm(index: GraphIndex, bn: onnx.NodeProto, name: str, chain: ActivationChain) -> None:
    non_constant = [f"{role} {tensor!r}" for role, tensor in zip(_BN_PARAM_NAMES, bn.input[1:5])
                    if not index.is_constant(tensor)]
    if non_constant:
        chain.problems.append(
            f"BatchNormalization {name!r} has non-constant params ({', '.join(non_constant)}), "
            f"so it cannot be folded into the conv")
    if attribute(bn, "training_mode", 0):
        chain.problems.append(f"BatchNormalization {name!r} is in training mode")
    if any(out and index.consumer_nodes(out) for out in bn.output[1:]):
        chain.problems.append(f"BatchNormalization {name!r} has its running statistics outputs in use")


def _clip_bounds(index: GraphIndex, clip: onnx.NodeProto, name: str,
                 chain: ActivationChain) -> tuple[float | None, float]:
    """(lower bound, upper bound) of a Clip; a missing bound is -inf / +inf. Opset < 11 keeps
    the bounds in attributes; newer opsets take optional inputs (initializers or Constant
    nodes). A bound computed at run time is recorded as a problem and returned as None."""
    bounds: list[float | None] = [-math.inf, math.inf]
    for slot, attr_name in enumerate(("min", "max")):
        from_attr = attribute(clip, attr_name)
        if from_attr is not None:
            bounds[slot] = float(from_attr)
        elif len(clip.input) > slot + 1 and clip.input[slot + 1]:
            tensor = clip.input[slot + 1]
            bounds[slot] = index.scalar(tensor)
            if bounds[slot] is None:
                chain.problems.append(f"Clip {name!r} has a non-constant {attr_name} ({tensor!r})")
    return bounds[0], math.inf if bounds[1] is None else float(bounds[1])


def match_activation_chain(index: GraphIndex, shapes: InferredShapes, conv_index: int) -> ActivationChain:
    """Follow a Conv's output through optional BatchNormalization and residual Add to a
    Relu or Clip(min=0); record every deviation from that pattern as a problem."""
    chain = ActivationChain()
    conv_name = index.names[conv_index]
    tensor = index.node(conv_index).output[0]
    owner = f"Conv {conv_name!r}"
    reader = _single_reader(index, tensor, owner, chain)
    if reader is not None and index.node(reader).op_type == "BatchNormalization" \
            and index.node(reader).input[0] == tensor:
        chain.bn = reader
        bn = index.node(reader)
        _check_batchnorm(index, bn, index.names[reader], chain)
        tensor = bn.output[0]
        owner = f"BatchNormalization {index.names[reader]!r}"
        reader = _single_reader(index, tensor, owner, chain)
    if reader is not None and index.node(reader).op_type == "Add":
        chain.add = reader
        add = index.node(reader)
        others = [t for t in add.input if t != tensor]
        if len(add.input) != 2 or len(others) != 1:
            chain.problems.append(f"Add {index.names[reader]!r} adds the conv output to itself")
        else:
            chain.skip_input = others[0]
            _check_residual_shapes(shapes, tensor, others[0], add.output[0], index.names[reader], chain)
        tensor = add.output[0]
        owner = f"Add {index.names[reader]!r}"
        reader = _single_reader(index, tensor, owner, chain)
    if reader is None:
        return chain
    node = index.node(reader)
    name = index.names[reader]
    if node.op_type == "Relu":
        chain.act = reader
    elif node.op_type == "Clip":
        chain.act = reader
        low, high = _clip_bounds(index, node, name, chain)
        chain.clip_max = high
        if low == -math.inf:
            chain.problems.append(f"Clip {name!r} has no lower bound, so it is not ReLU-like")
        elif low is not None and low != 0.0:
            chain.problems.append(f"Clip {name!r} has min {low:g}, not 0, so it is not ReLU-like")
    else:
        chain.problems.append(f"no ReLU after it (the output of {owner} goes to {node.op_type} {name!r})")
        return chain
    chain.preactivation = tensor
    chain.output = node.output[0]
    return chain


def _check_residual_shapes(shapes: InferredShapes, branch: str, skip: str, total: str, add_name: str,
                           chain: ActivationChain) -> None:
    out = shapes.static_shape(total)
    if out is None:
        chain.problems.append(f"no static output shape for Add {add_name!r}")
        return
    for tensor in (branch, skip):
        if shapes.static_shape(tensor) != out:
            chain.problems.append(
                f"residual Add {add_name!r} broadcasts {tensor!r} ({shapes.describe(tensor)}) "
                f"to {shapes.describe(total)}")


def conv_problems(index: GraphIndex, shapes: InferredShapes, conv_index: int,
                  weight_shape: tuple[int, ...], group: int,
                  max_predictor_share: float = MAX_PREDICTOR_COST_SHARE) -> list[str]:
    """Reasons, independent of what follows it, why this Conv cannot become a ZAP layer."""
    node = index.node(conv_index)
    problems: list[str] = []
    if len(weight_shape) != 4:
        problems.append(f"only 2-D convs are supported (this one is {len(weight_shape) - 2}-D)")
        return problems
    if shapes.elem_types.get(node.input[0], TensorProto.FLOAT) != TensorProto.FLOAT:
        problems.append("its input is not float32 (ZapConv computes in float32)")
    if not index.is_constant(node.input[1]):
        problems.append(f"its weights ({node.input[1]!r}) are not a constant")
    if len(node.input) > 2 and node.input[2] and not index.is_constant(node.input[2]):
        problems.append(f"its bias ({node.input[2]!r}) is not a constant")
    c_in_per_group, kh, kw = weight_shape[1:]
    conv_macs_per_output = c_in_per_group * kh * kw
    share = PREDICTOR_MACS_PER_OUTPUT / conv_macs_per_output
    if c_in_per_group == 1 and group > 1:
        problems.append(
            f"depthwise conv (group {group} = C_in): the predictor would cost "
            f"{PREDICTOR_MACS_PER_OUTPUT} MACs per output activation vs {conv_macs_per_output} "
            f"for the conv itself ({share:.0%})")
    elif share > max_predictor_share:
        problems.append(
            f"the predictor would cost {PREDICTOR_MACS_PER_OUTPUT} MACs per output activation vs "
            f"{conv_macs_per_output} for this {kh}x{kw} conv with {c_in_per_group} input channels "
            f"per group ({share:.0%}, above the {max_predictor_share:.0%} limit)")
    return problems
