"""Fold shape arithmetic (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``) to constants.

ONNX data propagation misses some of these chains (e.g. ``x.view(x.size(0), -1)`` exported
at opsets 11-13), leaving everything after a Reshape without a shape. Once the inputs are
pinned, those chains are constant: we evaluate them with ``onnx.reference`` on a copy of
the model, used only to learn shapes. Node names and the caller's model stay untouched.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from zapopt.graph.index import _NOT_FOLDABLE_OPS, _constant_node_value, attribute

#: Largest tensor we materialise: shape arithmetic is tiny, weights must never be copied.
MAX_FOLDED_ELEMENTS = 1 << 16


def _is_small(dims) -> bool:
    return math.prod(int(d) for d in dims) <= MAX_FOLDED_ELEMENTS


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _shape_value(node: onnx.NodeProto, dims: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(math.prod(dims), dtype=np.int64)
    start, end = attribute(node, "start", 0), attribute(node, "end", None)
    return np.array(dims[start:end], dtype=np.int64)


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list[np.ndarray] | None:
    """Run one node at the model's opset (wrapped in a model: a bare NodeProto would be run
    with the newest version of its op, e.g. Unsqueeze-13 for an opset-11 Unsqueeze)."""
    graph = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), None)
         for name, value in feeds.items()],
        [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        return ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # noqa: BLE001 - any op the reference runtime cannot run is simply not folded
        return None


def fold_shape_computations(model: onnx.ModelProto, static_shape: Callable[[str], tuple[int, ...] | None],
                            opset: int) -> tuple[onnx.ModelProto, bool]:
    """A copy of ``model`` where nodes computable from constants and known shapes became
    ``Constant`` nodes (outputs keep their names), and whether anything was folded."""
    values: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        if not onnx.external_data_helper.uses_external_data(tensor) and _is_small(tensor.dims):
            values[tensor.name] = numpy_helper.to_array(tensor)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    changed = False
    for node in model.graph.node:
        outputs: list[np.ndarray] | None = None
        inputs = [t for t in node.input if t]
        if node.domain not in ("", "ai.onnx") or _has_subgraph(node) or node.op_type in _NOT_FOLDABLE_OPS:
            pass
        elif node.op_type == "Constant":
            value = _constant_node_value(node)
            if value is not None and value.size <= MAX_FOLDED_ELEMENTS:
                values[node.output[0]] = value
        elif node.op_type in ("Shape", "Size") and static_shape(node.input[0]) is not None:
            outputs = [_shape_value(node, static_shape(node.input[0]))]
        elif inputs and all(t in values for t in inputs):
            outputs = _evaluate(node, {t: values[t] for t in inputs}, opset)
        if outputs is None or not all(np.asarray(o).size <= MAX_FOLDED_ELEMENTS for o in outputs):
            nodes.append(node)
            continue
        changed = True
        for name, value in zip([n for n in node.output if n], outputs):
            if name:
                value = np.asarray(value)
                values[name] = value
                nodes.append(onnx.helper.make_node("Constant", [], [name],
                                                   value=numpy_helper.from_array(value, name)))
    folded.graph.ClearField("node")
    folded.graph.node.extend(nodes)
    return folded, changed
