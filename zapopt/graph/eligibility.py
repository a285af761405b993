"""The ZapConv rule's own checks on a Conv, on top of the shared ``conv_chain`` pattern.

A ZAP layer computes Conv [+ folded BatchNorm] [+ residual Add] + ReLU-like clip as one
node and skips output activations predicted to be zero. So a Conv qualifies only when
``match_conv_chain`` matches it, and when the predictor is cheap compared with the conv
work it can skip (checked here).
"""
from __future__ import annotations

from onnx import TensorProto

from zapopt.graph.index import GraphIndex
from zapopt.graph.shapes import InferredShapes
from zapopt.ops.spec import PREDICTOR_MACS_PER_ACTIVATION

#: Largest predictor cost, as a share of the conv's own MACs per output activation
#: ((C_in/group) * kH * kW), for which a layer is eligible. Why a quarter: with the paper's
#: patterns 33-67 % of positions are computed up front anyway, and of the predicted rest
#: typically about half are zero, so ZAP skips roughly 15-35 % of a layer's work. A predictor
#: costing more than 25 % of the conv rarely pays for itself. In practice: a 3x3 conv needs
#: C_in/group >= 8, a 1x1 conv C_in/group >= 72; depthwise convs (200 %) never qualify.
MAX_PREDICTOR_COST_SHARE = 0.25


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
    share = PREDICTOR_MACS_PER_ACTIVATION / conv_macs_per_output
    if c_in_per_group == 1 and group > 1:
        problems.append(
            f"depthwise conv (group {group} = C_in): the predictor would cost "
            f"{PREDICTOR_MACS_PER_ACTIVATION} MACs per output activation vs {conv_macs_per_output} "
            f"for the conv itself ({share:.0%})")
    elif share > max_predictor_share:
        problems.append(
            f"the predictor would cost {PREDICTOR_MACS_PER_ACTIVATION} MACs per output activation vs "
            f"{conv_macs_per_output} for this {kh}x{kw} conv with {c_in_per_group} input channels "
            f"per group ({share:.0%}, above the {max_predictor_share:.0%} limit)")
    return problems
