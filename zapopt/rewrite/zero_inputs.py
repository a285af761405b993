"""Can a tensor hold exact zeros? The check behind every ZeroSkipConv rewrite.

A zero-skipping kernel only pays where its input has ReLU zeros, so a Conv qualifies when
its input comes from a ReLU-like op (Relu, Clip(min 0), a ZapConv, a ZeroSkipConv with its
ReLU), possibly through ops that keep those zeros (MaxPool, reshapes, a Concat of such
tensors). Anything else gets a reason a user can read.
"""
from __future__ import annotations

import onnx

from zapopt.graph.conv_chain import activation_check, is_onnx_op
from zapopt.graph.index import GraphIndex
from zapopt.ops.spec import ZeroSkipConvAttrs, is_zap_node, is_zero_skip_node

#: Ops whose output element is one input element, or a max of them: input zeros stay zeros
#: (a max of zeros is zero; for MaxPool after a ReLU every window value is >= 0).
_ZERO_KEEPING = frozenset({"MaxPool", "Identity", "Dropout", "Reshape", "Flatten", "Transpose",
                           "Squeeze", "Unsqueeze"})
_MAX_DEPTH = 16


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {(node.name or node.output[0])!r}"


def zero_input_reason(index: GraphIndex, tensor: str, _depth: int = 0) -> str | None:
    """None when ``tensor`` can hold exact zeros from a ReLU-like op, else why not."""
    position = index.producer_node(tensor)
    if position is None:
        if tensor in index.initializers:
            return f"its input {tensor!r} is a constant"
        return f"its input {tensor!r} is a graph input, which need not contain exact zeros"
    node = index.node(position)
    if _depth > _MAX_DEPTH:
        return f"its input {tensor!r} comes through more than {_MAX_DEPTH} reshaping ops"
    if is_zap_node(node):
        return None
    if is_zero_skip_node(node):
        if ZeroSkipConvAttrs.from_node(node).activation == "relu":
            return None
        return f"its input {tensor!r} comes from {_label(node)} without an activation"
    if node.domain in ("", "ai.onnx"):
        if (is_onnx_op(node, "Relu") or is_onnx_op(node, "Clip")) and not activation_check(index, position, "")[1]:
            return None
        if node.op_type in _ZERO_KEEPING and node.input and tensor == node.output[0]:
            return zero_input_reason(index, node.input[0], _depth + 1)
        if node.op_type == "Concat":
            for part in node.input:
                reason = zero_input_reason(index, part, _depth + 1)
                if reason is not None:
                    return reason
            return None
    return f"its input {tensor!r} comes from {_label(node)}, which does not produce exact zeros"
