"""``ReplaceWithZeroSkip``: ``Conv [+BN] [+Add] [+Relu | Clip(0, c)]`` -> ``ai.zapopt::ZeroSkipConv``.

Written as one rule in the onnxscript style: :meth:`ZeroSkipRule.pattern` finds the chain
that starts at a Conv, :meth:`ZeroSkipRule.check` says why it cannot be rewritten (None
when it can) and :meth:`ZeroSkipRule.rewrite` replaces it. The op is exact (it skips only
multiply-adds whose input is zero), so the only condition beyond a foldable chain is an
input that can be zero at all.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from zapopt.errors import ZapoptError
from zapopt.graph.conv_chain import ConvChain, activation_check, batchnorm_reasons, match_conv_chain
from zapopt.graph.index import GraphIndex
from zapopt.graph.macs import conv_geometry_2d
from zapopt.ops.spec import DOMAIN, VERSION, ZeroSkipConvAttrs, make_zero_skip_node
from zapopt.rewrite.base import Pass, PassResult
from zapopt.rewrite.graph_edit import NameAllocator, ensure_opset, tag_node, tensor_shape
from zapopt.rewrite.replace import folded_weights, layer_node_name, replaced_tag, splice_chain
from zapopt.rewrite.zero_inputs import zero_input_reason

#: Output channels per group below which the native kernel has only its scalar loop
#: (one AVX2 vector is 8 floats): MobileNetV2's depthwise convs ran 30-100x slower than
#: stock there (benchmarks/results/native_models/mobilenet_v2_exact.json), so such convs
#: are not offered at all rather than timed and rejected.
MIN_CHANNELS_PER_GROUP = 8

class ZeroSkipRule:
    """Pattern, check and rewrite for one Conv chain."""

    name = "ReplaceWithZeroSkip"

    @staticmethod
    def pattern(index: GraphIndex, conv_output: str) -> ConvChain:
        """The longest ``Conv [+BN] [+Add] [+act]`` prefix of the analysis pattern that starts at
        the Conv writing ``conv_output`` and can become one node (a chain without its ReLU, or
        cut short by a shared tensor, ends earlier)."""
        full = match_conv_chain(index, index.find_node(conv_output, ("Conv",)))
        conv = full.conv
        if full.bn is not None and batchnorm_reasons(index, full.bn):
            return ConvChain(conv=conv, output=index.node(conv).output[0])
        if full.add is not None and not full.skip_input:
            last = conv if full.bn is None else full.bn
            return ConvChain(conv=conv, bn=full.bn, output=index.node(last).output[0])
        act, clip_max = full.act, full.clip_max
        if act is not None and activation_check(index, act, "")[1]:
            act, clip_max = None, math.inf
        last = next(k for k in (act, full.add, full.bn, conv) if k is not None)
        return ConvChain(conv=conv, bn=full.bn, add=full.add, skip_input=full.skip_input, act=act,
                         clip_max=clip_max, output=index.node(last).output[0])

    @staticmethod
    def check(index: GraphIndex, inferred: onnx.ModelProto, chain: ConvChain) -> str | None:
        """Why the chain cannot become a ZeroSkipConv, or None when it can."""
        conv = index.node(chain.conv)
        weight = index.constant_value(conv.input[1])
        if weight is None:
            return f"its weights ({conv.input[1]!r}) are not a constant"
        if weight.dtype != np.float32:
            return f"its weights are {weight.dtype}; ZeroSkipConv is float32 only"
        if len(conv.input) > 2 and conv.input[2] and index.constant_value(conv.input[2]) is None:
            return f"its bias ({conv.input[2]!r}) is not a constant"
        try:
            geometry = conv_geometry_2d(conv, tuple(weight.shape), tensor_shape(inferred, conv.input[0]))
        except ZapoptError as exc:
            return str(exc)
        per_group = weight.shape[0] // max(geometry.group, 1)
        if geometry.group > 1 and per_group < MIN_CHANNELS_PER_GROUP:
            return (f"it is a grouped conv with {per_group} output channel(s) per group; the native kernel "
                    f"vectorizes over >= {MIN_CHANNELS_PER_GROUP} and would run far slower than stock")
        return zero_input_reason(index, conv.input[0])

    def rewrite(self, model: onnx.ModelProto, inferred: onnx.ModelProto, index: GraphIndex, chain: ConvChain,
                label: str, names: NameAllocator) -> onnx.NodeProto:
        """Replace ``chain`` by one ZeroSkipConv node named ``label``; returns the node."""
        conv = index.node(chain.conv)
        w, b = folded_weights(index, chain, label)
        geometry = conv_geometry_2d(conv, tuple(w.shape), tensor_shape(inferred, conv.input[0]))
        attrs = ZeroSkipConvAttrs(strides=geometry.strides, pads=geometry.pads, dilations=geometry.dilations,
                                  group=geometry.group, activation="none" if chain.act is None else "relu",
                                  clip_max=chain.clip_max if chain.act is not None else math.inf)
        weight_name = _weight_input(model, index, chain, 1, w, f"{label}.zs_W", names)
        bias_name = "" if b is None else _weight_input(model, index, chain, 2, b, f"{label}.zs_B", names)
        node = make_zero_skip_node(name=layer_node_name(model.graph, conv, label, names),
                                   x=conv.input[0], w=weight_name, b=bias_name, skip=chain.skip_input or "",
                                   y=chain.output or conv.output[0], attrs=attrs)
        chain_nodes = [index.node(k) for k in chain.positions]
        tag_node(node, self.name, model.ir_version, **replaced_tag(chain_nodes))
        splice_chain(model, inferred, chain_nodes, chain.add is not None, node)
        return node


def _weight_input(model: onnx.ModelProto, index: GraphIndex, chain: ConvChain, slot: int, value: np.ndarray,
                  fresh: str, names: NameAllocator) -> str:
    """The conv's own initializer when it is used unchanged (no BN folded), else a new one."""
    conv = index.node(chain.conv)
    if chain.bn is None and len(conv.input) > slot and conv.input[slot] in index.initializers:
        return conv.input[slot]
    name = names.fresh(fresh)
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
    return name


def zero_skip_candidates(model: onnx.ModelProto, layers: Sequence[str] | None = None) -> dict[str, str | None]:
    """``{conv name: None if it can become a ZeroSkipConv, else why not}`` for every Conv
    (or the named ones), judged on ``model`` as it is."""
    index = GraphIndex(model.graph)
    inferred = onnx.shape_inference.infer_shapes(model)
    wanted = None if layers is None else set(layers)
    result: dict[str, str | None] = {}
    for node, label in zip(model.graph.node, index.names):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or (wanted is not None and label not in wanted):
            continue
        result[label] = ZeroSkipRule.check(index, inferred, ZeroSkipRule.pattern(index, node.output[0]))
    return result


class ReplaceWithZeroSkip(Pass):
    """Rewrite every Conv chain whose input can be zero (or only the named ones, which
    then must qualify) into one ZeroSkipConv. ``skipped`` lists the others with reasons
    after a run."""

    name = ZeroSkipRule.name
    requires = "Convs to rewrite are 2-D, float32, with constant weights and an input that can be exactly zero"

    def __init__(self, layers: Sequence[str] | None = None) -> None:
        self.layers = None if layers is None else list(layers)
        self.skipped: dict[str, str] = {}

    def run(self, model: onnx.ModelProto) -> PassResult:
        candidates = zero_skip_candidates(model, self.layers)
        if self.layers is not None:
            missing = sorted(set(self.layers) - set(candidates))
            if missing:
                raise ZapoptError(f"no Conv named {', '.join(map(repr, missing))} in the graph")
            refused = {name: why for name, why in candidates.items() if why is not None}
            if refused:
                name, why = next(iter(refused.items()))
                raise ZapoptError(f"Conv {name!r} cannot become a ZeroSkipConv: {why}")
        self.skipped = {name: why for name, why in candidates.items() if why is not None}
        chosen = [name for name, why in candidates.items() if why is None]
        if not chosen:
            return PassResult(model, False)
        inferred = onnx.shape_inference.infer_shapes(model)
        names = NameAllocator(model)
        index = GraphIndex(model.graph)
        outputs = {name: index.node(index.find_node(name, ("Conv",))).output[0] for name in chosen}  # before editing
        rule = ZeroSkipRule()
        for name in chosen:
            index = GraphIndex(model.graph)
            rule.rewrite(model, inferred, index, rule.pattern(index, outputs[name]), name, names)
        ensure_opset(model, DOMAIN, VERSION)
        onnx.checker.check_model(model)
        return PassResult(model, True)
