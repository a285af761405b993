"""``FoldBatchNorm``: merge an inference-mode BatchNormalization into the Conv before it.

ZAP's predictor reads post-activation values, and a ZapConv node carries BN-folded
weights; folding separately is also useful on its own (fewer nodes to analyse).
"""
from __future__ import annotations

from typing import Sequence

import onnx
from onnx import helper, numpy_helper

from zapopt.errors import ZapoptError
from zapopt.rewrite.base import Pass, PassResult
from zapopt.rewrite.graph_edit import (
    GraphIndex,
    NameAllocator,
    remove_if_unused,
    remove_value_info,
    replace_nodes,
    tag_node,
)
from zapopt.rewrite.match import _is, batchnorm_params, fold_batchnorm


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
            targets = [n.output[0] for n in model.graph.node if self._foldable(index, n)]
        else:  # resolve names first: analysis names like 'Conv_3' count positions
            targets = [index.find_node(layer, ("Conv",)).output[0] for layer in self.layers]
        for target in targets:
            self._fold(model, GraphIndex(model.graph), target, names)
        return PassResult(model, bool(targets))

    @staticmethod
    def _foldable(index: GraphIndex, node: onnx.NodeProto) -> bool:
        if not _is(node, "Conv") or index.constant(node.input[1]) is None:
            return False
        bn = index.sole_consumer(node.output[0])
        if not _is(bn, "BatchNormalization") or bn.input[0] != node.output[0]:
            return False
        try:
            batchnorm_params(index, bn)
        except ZapoptError:
            return False
        return len(node.input) < 3 or not node.input[2] or index.constant(node.input[2]) is not None

    def _fold(self, model: onnx.ModelProto, index: GraphIndex, target: str, names: NameAllocator) -> None:
        graph = model.graph
        conv = index.producer[target]
        label = conv.name or conv.output[0]
        bn = index.sole_consumer(conv.output[0])
        if not _is(bn, "BatchNormalization"):
            raise ZapoptError(f"Conv {label!r} is not followed by a BatchNormalization it alone feeds")
        w = index.require_constant(conv.input[1], f"Conv {label!r} weight")
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        b = index.require_constant(conv.input[2], f"Conv {label!r} bias") if has_bias else None
        w_new, b_new = fold_batchnorm(w, b, batchnorm_params(index, bn))
        w_name, b_name = names.fresh(f"{label}.folded_W"), names.fresh(f"{label}.folded_B")
        graph.initializer.extend([numpy_helper.from_array(w_new, w_name), numpy_helper.from_array(b_new, b_name)])
        folded = helper.make_node("Conv", [conv.input[0], w_name, b_name], [bn.output[0]], name=conv.name or "")
        folded.attribute.extend(conv.attribute)
        folded.domain = conv.domain
        tag_node(folded, self.name, model.ir_version)
        replace_nodes(graph, [conv, bn], [folded], at=bn)
        remove_value_info(graph, [conv.output[0]])
        remove_if_unused(graph, [*conv.input[1:], *bn.input[1:]])
