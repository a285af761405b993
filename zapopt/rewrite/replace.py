"""``ReplaceWithZap``: turn ``Conv [+BN] [+Add] + Relu/Clip`` into one ``ai.zapopt::ZapConv``.

The ZapConv node writes the activation's output tensor, so every consumer and graph
output stays as it was; the node is named after the Conv so analysis records, threshold
tables and reports all key layers the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zapopt.errors import ZapoptError
from zapopt.graph.conv_chain import ConvChain, match_conv_chain
from zapopt.graph.index import GraphIndex
from zapopt.graph.macs import conv_geometry_2d
from zapopt.ops.patterns import Pattern
from zapopt.ops.spec import DOMAIN, PREDICTOR_INPUTS, VERSION, ZapConvAttrs, make_zap_node
from zapopt.predictor.folded import FoldedPredictor
from zapopt.rewrite.base import Pass, PassResult
from zapopt.rewrite.fold_bn import batchnorm_params, conv_weights, fold_batchnorm
from zapopt.rewrite.graph_edit import (
    NameAllocator,
    ensure_opset,
    remove_if_unused,
    remove_value_info,
    replace_nodes,
    tag_node,
    tensor_shape,
    value_info_for,
)


def _as_float32(name: str, value: np.ndarray) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"ZapParams.{name} must be a float array, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class ZapParams:
    """A trained predictor for one layer (BNs already folded), its pattern and threshold.

    The weights and their shape checks are ``FoldedPredictor``'s; ``from_arrays`` builds one
    from any float arrays. Added here: they must be finite, since they go into the model.
    """

    predictor: FoldedPredictor
    pattern: Pattern
    threshold: float
    predictor_input: str = "activation"

    @classmethod
    def from_arrays(cls, pw1: np.ndarray, pb1: np.ndarray, pw2: np.ndarray, pb2: np.ndarray,
                    pattern: Pattern, threshold: float, predictor_input: str = "activation") -> ZapParams:
        """The op's PW1, PB1, PW2, PB2 as float arrays of any precision (stored as float32)."""
        arrays = {"pw1": pw1, "pb1": pb1, "pw2": pw2, "pb2": pb2}
        predictor = FoldedPredictor(**{name: _as_float32(name, value) for name, value in arrays.items()})
        return cls(predictor, pattern, threshold, predictor_input)

    def __post_init__(self) -> None:
        if not isinstance(self.predictor, FoldedPredictor):
            raise TypeError(f"ZapParams.predictor must be a FoldedPredictor, got {type(self.predictor).__name__}")
        for name, value in self.predictor.to_arrays().items():
            if not np.isfinite(value).all():
                raise ZapoptError(f"ZapParams: the predictor's {name} contains NaN or inf")
        if not isinstance(self.pattern, Pattern):
            raise TypeError(f"ZapParams.pattern must be a Pattern, got {type(self.pattern).__name__}")
        if self.predictor_input not in PREDICTOR_INPUTS:
            raise ZapoptError(
                f"ZapParams.predictor_input must be one of {', '.join(PREDICTOR_INPUTS)}, got {self.predictor_input!r}"
            )

    @property
    def channels(self) -> int:
        return self.predictor.channels


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
        outputs = {name: index.node(index.find_node(name, ("Conv",))).output[0] for name in self.layers}
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
        graph = model.graph
        label = conv_name
        chain = match_conv_chain(index, index.find_node(conv_output, ("Conv",))).require(label)
        conv = index.node(chain.conv)
        w, b = folded_weights(index, chain, label)
        if w.shape[0] != params.channels:
            raise ZapoptError(
                f"layer {label!r} has {w.shape[0]} output channels but its predictor has {params.channels}"
            )
        geometry = conv_geometry_2d(conv, tuple(w.shape), tensor_shape(inferred, conv.input[0]))
        attrs = ZapConvAttrs(
            pattern=params.pattern, threshold=params.threshold, strides=geometry.strides,
            pads=geometry.pads, dilations=geometry.dilations, group=geometry.group,
            clip_max=chain.clip_max, predictor_input=params.predictor_input,
        )
        tensors = {"W": w.astype(np.float32), **params.predictor.to_arrays()}
        if b is not None:
            tensors["B"] = b.astype(np.float32)
        new_names = {key: names.fresh(f"{label}.zap_{key}") for key in tensors}
        graph.initializer.extend(numpy_helper.from_array(tensors[k], new_names[k]) for k in tensors)
        node = make_zap_node(
            name=layer_node_name(graph, conv, conv_name, names),
            x=conv.input[0], w=new_names["W"], b=new_names.get("B", ""),
            pw1=new_names["PW1"], pb1=new_names["PB1"], pw2=new_names["PW2"], pb2=new_names["PB2"],
            skip=chain.skip_input or "", y=chain.output, attrs=attrs,
        )
        chain_nodes = [index.node(k) for k in chain.positions]
        tag_node(node, self.name, model.ir_version, **replaced_tag(chain_nodes))
        splice_chain(model, inferred, chain_nodes, chain.add is not None, node)


#: Tag (``zapopt.replaced``) on a native node: the original nodes it replaced, comma-separated
#: (their names, or first output names), so a profile can set it against the stock nodes.
REPLACED_KEY = "replaced"


def replaced_tag(chain_nodes: list[onnx.NodeProto]) -> dict[str, str]:
    """The ``zapopt.replaced`` tag for the node replacing ``chain_nodes`` (keyword for ``tag_node``)."""
    return {REPLACED_KEY: ",".join(n.name or n.output[0] for n in chain_nodes)}


def folded_weights(index: GraphIndex, chain: ConvChain, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The chain's float32 conv weights and bias with its BatchNormalization folded in."""
    w, b = conv_weights(index, index.node(chain.conv), label)
    if w.dtype != np.float32:
        raise ZapoptError(f"Conv {label!r} has {w.dtype} weights; zapopt's ops are defined for float32 models only")
    if chain.bn is not None:
        w, b = fold_batchnorm(w, b, batchnorm_params(index, chain.bn))
    return w, b


def layer_node_name(graph: onnx.GraphProto, conv: onnx.NodeProto, wanted: str, names: NameAllocator) -> str:
    """The layer name the caller used, unless another node already carries it."""
    if any(n.name == wanted for n in graph.node if n is not conv):
        return names.fresh(wanted)
    return wanted


def splice_chain(model: onnx.ModelProto, inferred: onnx.ModelProto, chain_nodes: list[onnx.NodeProto],
                 has_add: bool, node: onnx.NodeProto) -> None:
    """Put ``node`` (writing the chain's output) where the chain stood, keep a value_info for
    that output, and drop the chain's weights that nothing reads any more (NodeProtos, not
    positions: positions go stale once the graph is edited)."""
    graph = model.graph
    output = chain_nodes[-1].output[0]
    add = next((n for n in chain_nodes if has_add and n.op_type == "Add"), None)
    replace_nodes(graph, chain_nodes, [node], at=chain_nodes[-1])
    remove_value_info(graph, [n.output[0] for n in chain_nodes[:-1]])
    if value_info_for(model, output) is None:
        declared = value_info_for(inferred, output)
        if declared is None:
            declared = helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)
        graph.value_info.append(declared)
    remove_if_unused(graph, [name for n in chain_nodes if n is not add for name in n.input[1:]])
