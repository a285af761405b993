"""``RebuildNativeOps``: the portable form back to the native one (``zapopt convert --to native``).

The expansion tags every node it writes with ``zapopt.rule=ExpandZapToOnnx`` and
``zapopt.origin=<native node>``, and stores the native node itself on the node that writes
its output. Each tagged group is replaced by that node again, the constants only the group
read are removed, and nothing is retrained. A model without those tags (written by other
tools, or tags stripped) is refused: its ops cannot be told apart from the user's own.
"""
from __future__ import annotations

from collections import defaultdict

import onnx

from zapopt.errors import ZapoptError
from zapopt.ops.spec import DOMAIN, VERSION
from zapopt.rewrite.base import Pass, PassResult
from zapopt.rewrite.expand import NATIVE_NODE_KEY, ExpandZapToOnnx, decode_node
from zapopt.rewrite.graph_edit import ensure_opset, is_native_node, remove_if_unused, remove_value_info, replace_nodes, tag_of

ORIGIN_KEY = "zapopt.origin"


def expansion_groups(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """``{origin: nodes}`` of every expansion the model holds, nodes in graph order."""
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if tag_of(node, "zapopt.rule") == ExpandZapToOnnx.name:
            origin = tag_of(node, ORIGIN_KEY)
            if not origin:
                raise ZapoptError(f"expansion node {node.name!r} has no {ORIGIN_KEY} tag; cannot tell which "
                                  "native op it belongs to")
            groups[origin].append(node)
    return dict(groups)


class RebuildNativeOps(Pass):
    """Replace each tagged expansion by the ZapConv/ZeroSkipConv node it came from."""

    name = "RebuildNativeOps"
    requires = "a portable model written by ExpandZapToOnnx, with its zapopt.rule/zapopt.origin tags intact"

    def run(self, model: onnx.ModelProto) -> PassResult:
        groups = expansion_groups(model)
        if not groups:
            raise ZapoptError(
                "the model has no nodes tagged zapopt.rule=ExpandZapToOnnx with a zapopt.origin, so there is no "
                "portable zapopt layer to turn back into a native op (convert only models that zapopt wrote in "
                "portable form, with their node metadata intact)")
        while groups:  # editing re-creates graph.node, so look the next group up afresh
            origin, nodes = next(iter(groups.items()))
            self._rebuild(model, origin, nodes)
            groups = expansion_groups(model)
        ensure_opset(model, DOMAIN, VERSION)
        onnx.checker.check_model(model)
        return PassResult(model, True)

    @staticmethod
    def _rebuild(model: onnx.ModelProto, origin: str, nodes: list[onnx.NodeProto]) -> None:
        stored = [tag_of(n, "zapopt." + NATIVE_NODE_KEY) for n in nodes]
        texts = [t for t in stored if t]
        if len(texts) != 1:
            raise ZapoptError(f"the portable layer {origin!r} carries {len(texts)} zapopt.{NATIVE_NODE_KEY} tags "
                              "instead of one; it was edited after zapopt wrote it and cannot be converted back")
        native = decode_node(texts[0])
        if not is_native_node(native):
            raise ZapoptError(f"the portable layer {origin!r} stores a {native.op_type} node, not a zapopt op")
        produced = {o for n in nodes for o in n.output if o}
        if native.output[0] not in produced:
            raise ZapoptError(f"the portable layer {origin!r} no longer writes {native.output[0]!r}; "
                              "it was edited after zapopt wrote it")
        group = {id(n) for n in nodes}
        available = ({t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
                     | {o for n in model.graph.node if id(n) not in group for o in n.output})
        missing = [name for name in native.input if name and name not in available]
        if missing:
            raise ZapoptError(f"the portable layer {origin!r} needs {', '.join(map(repr, missing))}, which the "
                              "model no longer has")
        read = [name for n in nodes for name in n.input]
        replace_nodes(model.graph, nodes, [native], at=nodes[-1])
        remove_value_info(model.graph, produced - set(native.output))
        remove_if_unused(model.graph, read)
