"""``ReplaceWithZap``: turn ``Conv [+BN] [+Add] + Relu/Clip`` into one ``ai.zapopt::ZapConv``.

The ZapConv node writes the activation's output tensor, so every consumer and graph
output stays as it was; the node is named after the Conv so analysis records, threshold
tables and reports all key layers the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zapopt.errors import ZapoptError
from zapopt.ops.patterns import Pattern
from zapopt.ops.spec import DOMAIN, PREDICTOR_INPUTS, VERSION, ZapConvAttrs, make_zap_node
from zapopt.rewrite.base import Pass, PassResult
from zapopt.rewrite.graph_edit import (
    GraphIndex,
    NameAllocator,
    ensure_opset,
    remove_if_unused,
    remove_value_info,
    replace_nodes,
    tag_node,
    tensor_shape,
    value_info_for,
)
from zapopt.rewrite.match import ConvChain, batchnorm_params, conv_geometry, fold_batchnorm, match_conv_chain


def _as_float32(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"ZapParams.{name} must be a float array, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.shape != shape:
        raise ZapoptError(f"ZapParams.{name} must have shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ZapoptError(f"ZapParams.{name} contains NaN or inf")
    return array


@dataclass(frozen=True, eq=False)
class ZapParams:
    """A trained predictor for one layer (BNs already folded), its pattern and threshold."""

    pw1: np.ndarray
    pb1: np.ndarray
    pw2: np.ndarray
    pb2: np.ndarray
    pattern: Pattern
    threshold: float
    predictor_input: str = "activation"
    channels: int = field(init=False)

    def __post_init__(self) -> None:
        c = int(np.shape(self.pw1)[0]) if np.ndim(self.pw1) == 4 else -1
        if c < 1:
            raise ZapoptError(f"ZapParams.pw1 must have shape (C, 1, 3, 3), got {np.shape(self.pw1)}")
        object.__setattr__(self, "channels", c)
        object.__setattr__(self, "pw1", _as_float32("pw1", self.pw1, (c, 1, 3, 3)))
        object.__setattr__(self, "pb1", _as_float32("pb1", self.pb1, (c,)))
        object.__setattr__(self, "pw2", _as_float32("pw2", self.pw2, (c, 1, 3, 3)))
        object.__setattr__(self, "pb2", _as_float32("pb2", self.pb2, (c,)))
        if not isinstance(self.pattern, Pattern):
            raise TypeError(f"ZapParams.pattern must be a Pattern, got {type(self.pattern).__name__}")
        if self.predictor_input not in PREDICTOR_INPUTS:
            raise ZapoptError(
                f"ZapParams.predictor_input must be one of {', '.join(PREDICTOR_INPUTS)}, got {self.predictor_input!r}"
            )


#: Tag (``zapopt.replaced``) on a native node: the original nodes it replaced, comma-separated
#: (their names, or first output names), so a profile can set it against the stock nodes.
REPLACED_KEY = "replaced"


def replaced_tag(chain: ConvChain) -> dict[str, str]:
    """The ``zapopt.replaced`` tag for the node replacing ``chain`` (keyword for ``tag_node``)."""
    return {REPLACED_KEY: ",".join(n.name or n.output[0] for n in chain.nodes)}


def folded_weights(index: GraphIndex, chain: ConvChain, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The chain's float32 conv weights and bias with its BatchNormalization folded in."""
    conv = chain.conv
    w = index.require_constant(conv.input[1], f"Conv {label!r} weight")
    if w.dtype != np.float32:
        raise ZapoptError(f"Conv {label!r} has {w.dtype} weights; zapopt's ops are defined for float32 models only")
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    b = index.require_constant(conv.input[2], f"Conv {label!r} bias") if has_bias else None
    if chain.bn is not None:
        w, b = fold_batchnorm(w, b, batchnorm_params(index, chain.bn))
    return w, b


def layer_node_name(graph: onnx.GraphProto, conv: onnx.NodeProto, wanted: str, names: NameAllocator) -> str:
    """The layer name the caller used, unless another node already carries it."""
    if any(n.name == wanted for n in graph.node if n is not conv):
        return names.fresh(wanted)
    return wanted


def splice_chain(model: onnx.ModelProto, inferred: onnx.ModelProto, chain: ConvChain, node: onnx.NodeProto) -> None:
    """Put ``node`` (writing the chain's output) where the chain stood, keep a value_info for
    that output, and drop the chain's weights that nothing reads any more."""
    graph = model.graph
    replace_nodes(graph, chain.nodes, [node], at=chain.nodes[-1])
    remove_value_info(graph, chain.intermediates)
    if value_info_for(model, chain.output) is None:
        declared = value_info_for(inferred, chain.output)
        if declared is None:
            declared = helper.make_tensor_value_info(chain.output, onnx.TensorProto.FLOAT, None)
        graph.value_info.append(declared)
    dead = [*chain.conv.input[1:]]
    for extra in (chain.bn, chain.act):
        if extra is not None:
            dead.extend(extra.input[1:])
    remove_if_unused(graph, dead)


class ReplaceWithZap(Pass):
    """Replace the chain starting at each named Conv with one ZapConv node."""

    name = "ReplaceWithZap"
    requires = (
        "each named Conv is 2-D with constant weights, followed by an optional inference-mode "
        "BatchNormalization and an optional Add, then Relu or Clip(0, c>0), with every "
        "intermediate tensor read only by the next node of the chain"
    )

    def __init__(self, layers: Mapping[str, ZapParams]) -> None:
        for key, params in layers.items():
            if not isinstance(params, ZapParams):
                raise TypeError(f"layer {key!r}: expected ZapParams, got {type(params).__name__}")
        self.layers = dict(layers)

    def run(self, model: onnx.ModelProto) -> PassResult:
        if not self.layers:
            return PassResult(model, False)
        inferred = onnx.shape_inference.infer_shapes(model)
        names = NameAllocator(model)
        # Resolve every name before editing: analysis names like 'Conv_3' count positions.
        index = GraphIndex(model.graph)
        outputs = {name: index.find_node(name, ("Conv",)).output[0] for name in self.layers}
        for conv_name, params in self.layers.items():
            self._replace(model, inferred, GraphIndex(model.graph), conv_name, outputs[conv_name], params, names)
        ensure_opset(model, DOMAIN, VERSION)
        onnx.checker.check_model(model)
        return PassResult(model, True)

    def _replace(
        self,
        model: onnx.ModelProto,
        inferred: onnx.ModelProto,
        index: GraphIndex,
        conv_name: str,
        conv_output: str,
        params: ZapParams,
        names: NameAllocator,
    ) -> None:
        chain: ConvChain = match_conv_chain(index, conv_output, label=conv_name)
        label = conv_name
        w, b = folded_weights(index, chain, label)
        if w.shape[0] != params.channels:
            raise ZapoptError(
                f"layer {label!r} has {w.shape[0]} output channels but its predictor has {params.channels}"
            )
        geometry = conv_geometry(chain.conv, tuple(w.shape), tensor_shape(inferred, chain.conv.input[0]))
        attrs = ZapConvAttrs(
            pattern=params.pattern, threshold=params.threshold, strides=geometry.strides,
            pads=geometry.pads, dilations=geometry.dilations, group=geometry.group,
            clip_max=chain.clip_max, predictor_input=params.predictor_input,
        )
        tensors = {
            "W": w.astype(np.float32), "PW1": params.pw1, "PB1": params.pb1, "PW2": params.pw2, "PB2": params.pb2,
        }
        if b is not None:
            tensors["B"] = b.astype(np.float32)
        new_names = {key: names.fresh(f"{label}.zap_{key}") for key in tensors}
        model.graph.initializer.extend(numpy_helper.from_array(tensors[k], new_names[k]) for k in tensors)
        node = make_zap_node(
            name=layer_node_name(model.graph, chain.conv, conv_name, names),
            x=chain.conv.input[0], w=new_names["W"], b=new_names.get("B", ""),
            pw1=new_names["PW1"], pb1=new_names["PB1"], pw2=new_names["PW2"], pb2=new_names["PB2"],
            skip=chain.skip_input or "", y=chain.output, attrs=attrs,
        )
        tag_node(node, self.name, model.ir_version, **replaced_tag(chain))
        splice_chain(model, inferred, chain, node)
