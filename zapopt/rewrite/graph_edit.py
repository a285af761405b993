"""Small helpers every rewrite pass needs: fresh names, node tags, node replacement,
dead-initializer cleanup. (Who produces/consumes a tensor: ``zapopt.graph.index.GraphIndex``.)

Kept separate from the passes so each pass reads as the rule it implements.
"""
from __future__ import annotations

import re
from typing import Iterable

import onnx
from onnx import helper

from zapopt.errors import ZapoptError
from zapopt.graph.index import names_used_in, subgraphs
from zapopt.ops.spec import RULE_KEY, is_zap_node, is_zero_skip_node

#: IR version that introduced ``NodeProto.metadata_props``; older models get doc_string tags.
_NODE_METADATA_IR = 10


class NameAllocator:
    """Hands out tensor/node names not yet used anywhere in the model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.taken: set[str] = set()
        self._collect(model.graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        self.taken.update(t.name for t in graph.initializer)
        self.taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            self.taken.add(node.name)
            self.taken.update(node.input)
            self.taken.update(node.output)
            for sub in subgraphs(node):
                self._collect(sub)

    def fresh(self, base: str) -> str:
        base = re.sub(r"\s+", "_", base) or "zap"
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


def tag_node(node: onnx.NodeProto, rule: str, ir_version: int, **extra: str) -> None:
    """Record which rule made ``node`` (``metadata_props`` or, for IR < 10, ``doc_string``)."""
    entries = {RULE_KEY: rule, **{f"zapopt.{k}": v for k, v in extra.items()}}
    if ir_version >= _NODE_METADATA_IR:
        for key, value in entries.items():
            node.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    else:
        node.doc_string = ";".join(f"{k}={v}" for k, v in entries.items())


def is_native_node(node: onnx.NodeProto) -> bool:
    """True for any ``ai.zapopt`` op zapopt's library runs (ZapConv or ZeroSkipConv)."""
    return is_zap_node(node) or is_zero_skip_node(node)


def tag_of(node: onnx.NodeProto, key: str) -> str | None:
    """The value of the tag ``key`` (e.g. ``zapopt.origin``) that :func:`tag_node` set, if any."""
    for entry in node.metadata_props:
        if entry.key == key:
            return entry.value
    for part in node.doc_string.split(";"):
        if part.startswith(key + "="):
            return part[len(key) + 1 :]
    return None


def rule_of(node: onnx.NodeProto) -> str | None:
    """The rule that created ``node``, if a zapopt rule did."""
    return tag_of(node, RULE_KEY)


def replace_nodes(
    graph: onnx.GraphProto, old: list[onnx.NodeProto], new: list[onnx.NodeProto], at: onnx.NodeProto
) -> None:
    """Remove ``old`` and put ``new`` where ``at`` (one of ``old``) stood, keeping topological order."""
    ids = {id(n) for n in old}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if node is at:
            kept.extend(new)
        if id(node) not in ids:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def remove_value_info(graph: onnx.GraphProto, names: Iterable[str]) -> None:
    """Drop value_info entries for tensors that no longer exist."""
    gone = set(names)
    kept = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept)


#: Nodes that only produce or forward constants; removed with the weights they carry.
_CONSTANT_FORWARDERS = ("Constant", "Identity", "Cast")


def _names_read(graph: onnx.GraphProto, skip: set[int]) -> set[str]:
    """Tensors read by the nodes not in ``skip`` (positions), their subgraphs, or graph outputs."""
    used = {o.name for o in graph.output}
    for position, node in enumerate(graph.node):
        if position not in skip:
            used.update(n for n in node.input if n)
            for sub in subgraphs(node):
                used |= names_used_in(sub)
    return used


def remove_if_unused(graph: onnx.GraphProto, names: Iterable[str]) -> list[str]:
    """Delete the initializers among ``names`` that nothing reads any more, and the
    Constant/Identity/Cast nodes that produced them (then, in turn, their inputs)."""
    initializers = {t.name for t in graph.initializer}
    dead_inits: set[str] = set()
    dead_nodes: set[int] = set()
    pending = [n for n in names if n]
    while pending:
        name = pending.pop()
        used = _names_read(graph, dead_nodes)
        if name in dead_inits or name in used:
            continue
        producer = next((i for i, n in enumerate(graph.node) if i not in dead_nodes and name in n.output), None)
        if producer is None:
            if name in initializers:
                dead_inits.add(name)
            continue
        node = graph.node[producer]
        if node.op_type in _CONSTANT_FORWARDERS and node.domain in ("", "ai.onnx") and not set(node.output) & used:
            dead_nodes.add(producer)
            pending.extend(node.input)
    if dead_inits:
        inits = [t for t in graph.initializer if t.name not in dead_inits]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        inputs = [v for v in graph.input if v.name not in dead_inits]
        del graph.input[:]
        graph.input.extend(inputs)
    if dead_nodes:
        nodes = [n for i, n in enumerate(graph.node) if i not in dead_nodes]
        del graph.node[:]
        graph.node.extend(nodes)
    return sorted(dead_inits)


def default_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    raise ZapoptError("the model imports no default ONNX opset")


def ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    """Import ``domain`` at ``version`` (ZapoptError if another version is imported)."""
    for op in model.opset_import:
        if op.domain == domain:
            if op.version != version:
                raise ZapoptError(f"the model imports {domain} version {op.version}; zapopt writes version {version}")
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


def drop_opset(model: onnx.ModelProto, domain: str) -> None:
    kept = [op for op in model.opset_import if op.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def tensor_shape(model: onnx.ModelProto, name: str) -> tuple[int | str | None, ...] | None:
    """Declared shape of ``name`` (dims: int, symbolic str or None); None if not declared."""
    graph = model.graph
    for vi in (*graph.value_info, *graph.input, *graph.output):
        if vi.name == name and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = []
            for d in vi.type.tensor_type.shape.dim:
                dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
            return tuple(dims)
    for init in graph.initializer:
        if init.name == name:
            return tuple(init.dims)
    return None


def value_info_for(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto | None:
    graph = model.graph
    for vi in (*graph.value_info, *graph.input, *graph.output):
        if vi.name == name:
            return vi
    return None
