"""Find the ``Conv [+BatchNormalization] [+Add] + Relu/Clip(0, c)`` chain that starts at a Conv.

The fields mirror ``zapopt.graph``'s ``ConvActivation`` records (bn, add, skip_input, act,
clip_max, output), but the rewrite re-derives them from the graph it is editing so it
never trusts a stale analysis: a chain whose intermediate tensors are read elsewhere
cannot become one node, and the error says which tensor is shared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from zapopt.errors import ZapoptError
from zapopt.rewrite.graph_edit import GraphIndex

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is(node: onnx.NodeProto | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in _DEFAULT_DOMAINS


@dataclass(frozen=True)
class ConvGeometry:
    """Conv hyper-parameters with explicit pads ``[top, left, bottom, right]``."""

    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int


def _same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def conv_geometry(conv: onnx.NodeProto, weight_shape: tuple[int, ...], input_shape: tuple | None) -> ConvGeometry:
    """Explicit geometry of a 2-D ONNX Conv (``auto_pad`` resolved; SAME_* needs the input size)."""
    if len(weight_shape) != 4:
        raise ZapoptError(f"Conv {conv.name!r} is not 2-D (weights {weight_shape}); ZAP handles 2-D convs only")
    attrs = _attrs(conv)
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", weight_shape[2:]))
    if kernel != tuple(weight_shape[2:]):
        raise ZapoptError(f"Conv {conv.name!r}: kernel_shape {list(kernel)} disagrees with weights {weight_shape}")
    strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
    dilations = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        p = [int(v) for v in attrs.get("pads", (0, 0, 0, 0))]
        pads = (p[0], p[1], p[2], p[3])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        known = input_shape is not None and len(input_shape) == 4 and all(isinstance(d, int) for d in input_shape[2:])
        if not known and strides != (1, 1):  # with stride 1 the padding does not depend on the size
            raise ZapoptError(
                f"Conv {conv.name!r} uses auto_pad={auto_pad} with strides {list(strides)} but its input's "
                "spatial size is unknown; give the model static input shapes"
            )
        height, width = (input_shape[2], input_shape[3]) if known else (1, 1)  # type: ignore[index]
        upper = auto_pad == "SAME_UPPER"
        top, bottom = _same_pads(height, kernel[0], strides[0], dilations[0], upper)
        left, right = _same_pads(width, kernel[1], strides[1], dilations[1], upper)
        pads = (top, left, bottom, right)
    else:
        raise ZapoptError(f"Conv {conv.name!r} has unknown auto_pad {auto_pad!r}")
    group = int(attrs.get("group", 1))
    return ConvGeometry(strides=strides, pads=pads, dilations=dilations, group=group)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BatchNormParams:
    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float


def batchnorm_params(index: GraphIndex, bn: onnx.NodeProto) -> BatchNormParams:
    """Constant inference-mode parameters of a BatchNormalization node."""
    attrs = _attrs(bn)
    if int(attrs.get("training_mode", 0)):
        raise ZapoptError(f"BatchNormalization {bn.name!r} is in training mode; export the model in eval mode")
    if any(o for o in bn.output[1:]):
        raise ZapoptError(f"BatchNormalization {bn.name!r} exposes running statistics outputs; cannot fold it")
    scale, bias, mean, var = (
        index.require_constant(n, f"BatchNormalization {bn.name!r} input").astype(np.float64) for n in bn.input[1:5]
    )
    return BatchNormParams(scale, bias, mean, var, float(attrs.get("epsilon", 1e-5)))


def _foldable_bn(index: GraphIndex, bn: onnx.NodeProto) -> bool:
    """Whether :func:`batchnorm_params` accepts ``bn`` (else a chain may end before it)."""
    return (not int(_attrs(bn).get("training_mode", 0)) and not any(o for o in bn.output[1:])
            and all(index.constant(n) is not None for n in bn.input[1:5]))


def fold_batchnorm(w: np.ndarray, b: np.ndarray | None, bn: BatchNormParams) -> tuple[np.ndarray, np.ndarray]:
    """``W' = W * g / sqrt(var + eps)``, ``B' = (B - mean) * g / sqrt(var + eps) + beta`` (float64 math)."""
    factor = bn.scale / np.sqrt(bn.var + bn.epsilon)
    w64 = w.astype(np.float64) * factor[:, None, None, None]
    b64 = (np.zeros(w.shape[0]) if b is None else b.astype(np.float64)) - bn.mean
    return w64.astype(np.float32), (b64 * factor + bn.bias).astype(np.float32)


def clip_max_of(index: GraphIndex, act: onnx.NodeProto) -> float | None:
    """``clip_max`` of a ReLU-like activation (``+inf`` for Relu), None if it is not ReLU-like."""
    if _is(act, "Relu"):
        return math.inf
    if not _is(act, "Clip"):
        return None
    attrs = _attrs(act)
    if "min" in attrs or "max" in attrs:  # opset < 11
        lo, hi = attrs.get("min", -math.inf), attrs.get("max", math.inf)
    else:
        def bound(i: int, default: float) -> float | None:
            if len(act.input) <= i or not act.input[i]:
                return default
            value = index.constant(act.input[i])
            return None if value is None or value.size != 1 else float(value.reshape(()))
        lo, hi = bound(1, -math.inf), bound(2, math.inf)
        if lo is None or hi is None:
            return None
    if lo != 0.0 or not hi > 0.0:
        return None
    return float(hi)


@dataclass(frozen=True)
class ConvChain:
    """One ``Conv [+BN] [+Add] [+act]`` chain (nodes in graph order); ``act`` is None only
    when the chain was matched with ``activation_optional`` (``clip_max`` is then None)."""

    conv: onnx.NodeProto
    bn: onnx.NodeProto | None
    add: onnx.NodeProto | None
    act: onnx.NodeProto | None
    skip_input: str | None
    clip_max: float | None

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return [n for n in (self.conv, self.bn, self.add, self.act) if n is not None]

    @property
    def output(self) -> str:
        return self.nodes[-1].output[0]

    @property
    def intermediates(self) -> list[str]:
        """Tensors that exist only inside the chain."""
        return [n.output[0] for n in self.nodes[:-1]]


def match_conv_chain(index: GraphIndex, conv_name: str, label: str | None = None, *,
                     activation_optional: bool = False) -> ConvChain:
    """The chain starting at the Conv called ``conv_name`` (see ``GraphIndex.find_node``);
    ``label`` names the layer in error messages. With ``activation_optional`` the chain
    ends, instead of failing, where the next node is not part of it or the tensor is shared."""
    conv = index.find_node(conv_name, ("Conv",))
    label = label or conv.name or conv.output[0]
    if conv.domain not in _DEFAULT_DOMAINS:
        raise ZapoptError(f"node {label!r} is {conv.domain}::Conv, not an ONNX Conv")

    def next_of(tensor: str, after: str) -> onnx.NodeProto | None:
        node = index.sole_consumer(tensor)
        if node is None and not activation_optional:
            raise ZapoptError(
                f"Conv {label!r}: the output {tensor!r} of its {after} is read by more than one node, "
                "is a graph output, or is unused, so the chain cannot become one ZapConv"
            )
        return node

    def chain(act: onnx.NodeProto | None, clip_max: float | None) -> ConvChain:
        return ConvChain(conv=conv, bn=bn, add=add, act=act, skip_input=skip, clip_max=clip_max)

    node, bn, add, skip = next_of(conv.output[0], "Conv"), None, None, None
    if _is(node, "BatchNormalization") and node.input[0] == conv.output[0] \
            and (not activation_optional or _foldable_bn(index, node)):
        bn, node = node, next_of(node.output[0], "BatchNormalization")
    if _is(node, "Add"):
        branch = (bn or conv).output[0]
        others = [i for i in node.input if i != branch]
        if len(node.input) != 2 or len(others) != 1:
            if not activation_optional:
                raise ZapoptError(f"Conv {label!r}: Add {node.name!r} adds the conv output to itself; not a residual")
            return chain(None, None)
        add, skip, node = node, others[0], next_of(node.output[0], "Add")
    clip_max = None if node is None else clip_max_of(index, node)
    if clip_max is None:
        if activation_optional:
            return chain(None, None)
        raise ZapoptError(
            f"Conv {label!r} is followed by {node.op_type} {node.name!r}, not Relu or Clip(min=0, max>0); "
            "ZAP predicts zeros of ReLU-like activations only"
        )
    return chain(node, clip_max)
