"""``FoldBatchNorm``: merge an inference-mode BatchNormalization into the Conv before it.

ZAP's predictor reads post-activation values, and a ZapConv node carries BN-folded
weights; folding separately is also useful on its own (fewer nodes to analyse).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zapopt.errors import ZapoptError
from zapopt.graph.conv_chain import batchnorm_reasons, is_onnx_op, sole_reader
from zapopt.graph.index import GraphIndex, attribute
from zapopt.rewrite.base import Pass, PassResult
from zapopt.rewrite.graph_edit import (
    NameAllocator,
    remove_if_unused,
    remove_value_info,
    replace_nodes,
    tag_node,
)


@dataclass(frozen=True)
class BatchNormParams:
    """An inference-mode BatchNormalization's constants, in float64 for exact folding."""

    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float


def batchnorm_params(index: GraphIndex, bn_position: int) -> BatchNormParams:
    """Constant inference-mode parameters of the BatchNormalization at ``bn_position``
    (ZapoptError with the reasons when it cannot be folded)."""
    reasons = batchnorm_reasons(index, bn_position)
    if reasons:
        raise ZapoptError("; ".join(reasons))
    bn = index.node(bn_position)
    what = f"BatchNormalization {index.names[bn_position]!r} input"
    scale, bias, mean, var = (index.require_constant(n, what).astype(np.float64) for n in bn.input[1:5])
    return BatchNormParams(scale, bias, mean, var, float(attribute(bn, "epsilon", 1e-5)))


def fold_batchnorm(w: np.ndarray, b: np.ndarray | None, bn: BatchNormParams) -> tuple[np.ndarray, np.ndarray]:
    """``W' = W * g / sqrt(var + eps)``, ``B' = (B - mean) * g / sqrt(var + eps) + beta`` (float64 math)."""
    factor = bn.scale / np.sqrt(bn.var + bn.epsilon)
    w64 = w.astype(np.float64) * factor[:, None, None, None]
    b64 = (np.zeros(w.shape[0]) if b is None else b.astype(np.float64)) - bn.mean
    return w64.astype(np.float32), (b64 * factor + bn.bias).astype(np.float32)


def conv_weights(index: GraphIndex, conv: onnx.NodeProto, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A Conv's constant weight and bias (None when it has none)."""
    w = index.require_constant(conv.input[1], f"Conv {label!r} weight")
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    return w, index.require_constant(conv.input[2], f"Conv {label!r} bias") if has_bias else None


class FoldBatchNorm(Pass):
    """Fold ``Conv -> BatchNormalization`` pairs.

    ``layers``: Conv node names (or output names) to fold; None folds every Conv whose sole
    consumer is a foldable BN, and silently skips the rest. A named layer that cannot be
    folded is a ZapoptError.
    """

    name = "FoldBatchNorm"
    requires = "Conv weights (and bias) and BN parameters are initializers or Constants"

    def __init__(self, layers: Sequence[str] | None = None) -> None:
        self.layers = None if layers is None else list(layers)

    def run(self, model: onnx.ModelProto) -> PassResult:
        names = NameAllocator(model)
        index = GraphIndex(model.graph)
        if self.layers is None:
            targets = [n.output[0] for k, n in enumerate(model.graph.node) if self._foldable(index, k)]
        else:  # resolve names first: analysis names like 'Conv_3' count positions
            targets = [index.node(index.find_node(layer, ("Conv",))).output[0] for layer in self.layers]
        for target in targets:
            self._fold(model, GraphIndex(model.graph), target, names)
        return PassResult(model, bool(targets))

    @staticmethod
    def _foldable(index: GraphIndex, position: int) -> bool:
        node = index.node(position)
        if not is_onnx_op(node, "Conv") or index.constant_value(node.input[1]) is None:
            return False
        bn_position, _ = sole_reader(index, node.output[0], "Conv")
        if bn_position is None:
            return False
        bn = index.node(bn_position)
        if not is_onnx_op(bn, "BatchNormalization") or bn.input[0] != node.output[0]:
            return False
        if batchnorm_reasons(index, bn_position):
            return False
        return len(node.input) < 3 or not node.input[2] or index.constant_value(node.input[2]) is not None

    def _fold(self, model: onnx.ModelProto, index: GraphIndex, target: str, names: NameAllocator) -> None:
        graph = model.graph
        conv = index.node(index.producer[target])
        label = conv.name or conv.output[0]
        bn_position, _ = sole_reader(index, conv.output[0], f"Conv {label!r}")
        bn = None if bn_position is None else index.node(bn_position)
        if not is_onnx_op(bn, "BatchNormalization"):
            raise ZapoptError(f"Conv {label!r} is not followed by a BatchNormalization it alone feeds")
        w, b = conv_weights(index, conv, label)
        w_new, b_new = fold_batchnorm(w, b, batchnorm_params(index, bn_position))  # type: ignore[arg-type]
        w_name, b_name = names.fresh(f"{label}.folded_W"), names.fresh(f"{label}.folded_B")
        graph.initializer.extend([numpy_helper.from_array(w_new, w_name), numpy_helper.from_array(b_new, b_name)])
        folded = helper.make_node("Conv", [conv.input[0], w_name, b_name], [bn.output[0]], name=conv.name or "")
        folded.attribute.extend(conv.attribute)
        folded.domain = conv.domain
        tag_node(folded, self.name, model.ir_version)
        replace_nodes(graph, [conv, bn], [folded], at=bn)
        remove_value_info(graph, [conv.output[0]])
        remove_if_unused(graph, [*conv.input[1:], *bn.input[1:]])
