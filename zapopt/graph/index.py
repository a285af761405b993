"""Lookup tables over one ONNX graph: unique node names, producers, consumers, constants.

Node names in the wild are often empty or duplicated (exporters, hand edits, merges), yet
every report and every rewrite has to point at one node unambiguously. We give each node a
stable unique name in memory and never touch the file.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from zapopt.errors import ZapoptError


#: Ops whose output is not a function of constant inputs alone (randomness, subgraphs).
_NOT_FOLDABLE_OPS = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "Dropout", "If", "Loop", "Scan",
})


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs (If branches, Loop/Scan bodies) a node carries."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def names_used_in(graph: onnx.GraphProto) -> set[str]:
    """Every tensor a graph (and its nested subgraphs) reads or outputs."""
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for sub in subgraphs(node):
            used |= names_used_in(sub)
    used.update(o.name for o in graph.output)
    return used


def unique_node_names(graph: onnx.GraphProto) -> list[str]:
    """One name per node of ``graph.node`` (same order): the node's own name when it is
    non-empty and unique, else ``{op_type}_{index}`` (index = position in the graph)."""
    counts = Counter(node.name for node in graph.node)
    kept = {node.name for node in graph.node if node.name and counts[node.name] == 1}
    taken = set(kept)
    names: list[str] = []
    for index, node in enumerate(graph.node):
        if node.name in kept:
            names.append(node.name)
            continue
        candidate = f"{node.op_type}_{index}"
        suffix = 1
        while candidate in taken:
            candidate = f"{node.op_type}_{index}_{suffix}"
            suffix += 1
        taken.add(candidate)
        names.append(candidate)
    return names


def with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main-graph nodes carry the names ``unique_node_names`` gives,
    so that a rewrite can find the nodes an analysis report names."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node, name in zip(copy.graph.node, unique_node_names(copy.graph)):
        node.name = name
    return copy


@dataclass
class GraphIndex:
    """Who produces and who consumes each tensor of the main graph, and its constants.

    A snapshot: analysis reads it as is, a rewrite builds a new one after each edit. Nodes
    are addressed by position in ``graph.node``; ``names`` gives each a unique name.
    """

    graph: onnx.GraphProto
    base_dir: Path | None = None
    names: list[str] = field(init=False)
    producer: dict[str, int] = field(init=False)
    consumers: dict[str, list[int]] = field(init=False)
    initializers: dict[str, onnx.TensorProto] = field(init=False)
    graph_inputs: list[str] = field(init=False)
    graph_outputs: set[str] = field(init=False)
    used_in_subgraphs: set[str] = field(init=False)
    _constant_memo: dict[str, bool] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.names = unique_node_names(self.graph)
        self.initializers = {t.name: t for t in self.graph.initializer}
        # IR < 4 lists initializers as graph inputs too; they are weights, not data.
        self.graph_inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.graph_outputs = {o.name for o in self.graph.output}
        self.producer = {}
        self.consumers = defaultdict(list)
        self.used_in_subgraphs = set()
        for index, node in enumerate(self.graph.node):
            for name in node.output:
                if name:
                    self.producer[name] = index
            for name in dict.fromkeys(node.input):  # a node reading a tensor twice counts once
                if name:
                    self.consumers[name].append(index)
            for sub in subgraphs(node):
                self.used_in_subgraphs |= names_used_in(sub)

    def node(self, index: int) -> onnx.NodeProto:
        return self.graph.node[index]

    def consumer_nodes(self, tensor: str) -> list[int]:
        return list(self.consumers.get(tensor, []))

    def producer_node(self, tensor: str) -> int | None:
        return self.producer.get(tensor)

    def in_use(self, tensor: str) -> bool:
        """Read by a node, by a subgraph, or a graph output."""
        return bool(self.consumers.get(tensor)) or tensor in self.graph_outputs \
            or tensor in self.used_in_subgraphs

    def find_node(self, name: str, op_types: Iterable[str] = ()) -> int:
        """The position of a node by its name, by the name analysis reports for it
        (``Conv_3`` for an unnamed or duplicated one), else by the name of its first output."""
        wanted = set(op_types)

        def fits(position: int) -> bool:
            return not wanted or self.graph.node[position].op_type in wanted

        for position, reported in enumerate(self.names):
            if reported == name and fits(position):
                return position
        if sum(1 for n in self.graph.node if n.name == name) > 1:
            raise ZapoptError(
                f"several nodes are named {name!r}; use the names zapopt.graph reports (e.g. 'Conv_3'), "
                "which are unique")
        position = self.producer.get(name)
        if position is not None and self.graph.node[position].output[0] == name and fits(position):
            return position
        candidates = [reported for k, reported in enumerate(self.names) if fits(k)]
        shown = ", ".join(candidates[:10]) + (" ..." if len(candidates) > 10 else "")
        kinds = "/".join(sorted(wanted)) or "node"
        raise ZapoptError(f"no {kinds} named {name!r} in the graph; known: {shown or 'none'}")

    def is_constant(self, tensor: str) -> bool:
        """True when the tensor's value is fixed at load time: initializers, ``Constant``
        outputs, and deterministic nodes of constants only (exporters emit e.g. ``Identity``
        of a shared initializer)."""
        if tensor in self._constant_memo:
            return self._constant_memo[tensor]
        self._constant_memo[tensor] = False  # guards against cycles in malformed graphs
        result = tensor in self.initializers
        if not result and tensor in self.producer:
            node = self.graph.node[self.producer[tensor]]
            inputs = [t for t in node.input if t]
            result = node.op_type == "Constant" or (
                node.op_type not in _NOT_FOLDABLE_OPS and bool(inputs)
                and all(self.is_constant(t) for t in inputs))
        self._constant_memo[tensor] = result
        return result

    def constant_value(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor (through ``Identity``/``Cast`` chains), or None
        when it is computed at run time or by an op we do not evaluate."""
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor],
                                         base_dir=str(self.base_dir) if self.base_dir else "")
        index = self.producer.get(tensor)
        if index is None:
            return None
        node = self.graph.node[index]
        if node.op_type == "Constant":
            return _constant_node_value(node)
        if node.op_type == "Identity":
            return self.constant_value(node.input[0])
        if node.op_type == "Cast":
            value = self.constant_value(node.input[0])
            to = attribute(node, "to")
            return None if value is None or to is None else value.astype(
                onnx.helper.tensor_dtype_to_np_dtype(to))
        return None

    def require_constant(self, tensor: str, what: str) -> np.ndarray:
        """``constant_value``, or a ZapoptError naming ``what`` needed it."""
        value = self.constant_value(tensor)
        if value is None:
            raise ZapoptError(f"{what} {tensor!r} must be an initializer or Constant, it is computed at run time")
        return value

    def scalar(self, tensor: str) -> float | None:
        """A constant single-element tensor as a float, else None."""
        init = self.initializers.get(tensor)
        if init is not None and math.prod(init.dims) != 1:
            return None  # never read a large (possibly stripped) initializer for a scalar
        value = self.constant_value(tensor)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(-1)[0])


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def attribute(node: onnx.NodeProto, name: str, default=None):
    """A node attribute as a Python value (ints/floats lists become tuples)."""
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                return value.decode("utf-8", errors="replace")
            if isinstance(value, list):
                return tuple(value)
            return value
    return default


