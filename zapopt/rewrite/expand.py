"""``ExpandZapToOnnx``: rewrite every ZapConv and ZeroSkipConv into standard ONNX ops
(opsets 11 and later): the portable form of a model zapopt writes.

The ZapConv expansion computes the whole convolution and masks the result, so it saves
nothing; it exists so a ZAP model runs on stock onnxruntime (accuracy checks, no native
kernel) and, with ``expose_masks=True``, reports which activations a kernel would have
computed. A ZeroSkipConv expands to the ``Conv [+Add] [+Relu|Clip]`` it stands for. Outputs
equal the numpy reference up to the runtime's float32 accumulation order.

Every expansion node is tagged with the rule and its origin (the native node's name); the
node that writes the layer's output also carries the native node itself (``zapopt.native_node``),
so :class:`RebuildNativeOps` can turn the portable form back into the native one exactly.
"""
from __future__ import annotations

import base64
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zapopt.errors import ZapoptError
from zapopt.graph.index import GraphIndex
from zapopt.ops.reference import conv_output_size
from zapopt.ops.spec import DOMAIN, ZapConvAttrs, ZeroSkipConvAttrs, is_zero_skip_node
from zapopt.rewrite.base import Pass, PassResult
from zapopt.rewrite.graph_edit import (
    NameAllocator,
    is_native_node,
    default_opset,
    drop_opset,
    replace_nodes,
    tag_node,
    tensor_shape,
)

MIN_OPSET = 11
#: Tag (``zapopt.native_node``) on the expansion node that writes a native node's output.
NATIVE_NODE_KEY = "native_node"


def encode_node(node: onnx.NodeProto) -> str:
    """A native node as tag text (base64 of its serialized proto)."""
    return base64.b64encode(node.SerializeToString()).decode("ascii")


def decode_node(text: str) -> onnx.NodeProto:
    node = onnx.NodeProto()
    try:
        node.ParseFromString(base64.b64decode(text.encode("ascii"), validate=True))
    except Exception:  # binascii.Error, protobuf DecodeError
        raise ZapoptError("a zapopt.native_node tag is damaged; the portable model cannot be converted back") from None
    return node


def mask_output_name(layer: str) -> str:
    """Graph output carrying a layer's ``Computed`` mask when the node declares none
    (``layer`` is the ZapConv node's name, or its output's name if the node has none)."""
    return f"{layer}.computed"


class _Builder:
    """Collects the nodes and initializers that replace one ZapConv node."""

    def __init__(self, model: onnx.ModelProto, names: NameAllocator, label: str, rule: str) -> None:
        self.model, self.names, self.label, self.rule = model, names, label, rule
        self.nodes: list[onnx.NodeProto] = []

    def const(self, key: str, value: np.ndarray) -> str:
        name = self.names.fresh(f"{self.label}/{key}")
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], key: str, output: str | None = None,
           native: onnx.NodeProto | None = None, **attrs) -> str:
        """Add one tagged node; ``native``: the node being expanded, stored on the node that
        writes its output so the way back is exact."""
        out = output or self.names.fresh(f"{self.label}/{key}")
        node = helper.make_node(op_type, inputs, [out], name=self.names.fresh(f"{self.label}/{op_type}_{key}"), **attrs)
        extra = {} if native is None else {NATIVE_NODE_KEY: encode_node(native)}
        tag_node(node, self.rule, self.model.ir_version, origin=self.label, **extra)
        self.nodes.append(node)
        return out

    def activation(self, v: str, clip_max: float, key: str, output: str | None = None,
                   native: onnx.NodeProto | None = None) -> str:
        """``Relu`` for ``clip_max = +inf``, else ``Clip(v, 0, clip_max)``."""
        if math.isfinite(clip_max):
            zero = self.const("clip_min", np.array(0.0, np.float32))
            bounds = [zero, self.const("clip_max", np.array(clip_max, np.float32))]
            return self.op("Clip", [v, *bounds], key, output, native)
        return self.op("Relu", [v], key, output, native)


class ExpandZapToOnnx(Pass):
    """Replace each ZapConv by Conv/Add/Clip/Mul/depthwise Conv/Greater/Or/Where and each
    ZeroSkipConv by Conv [+Add] [+Relu|Clip]."""

    name = "ExpandZapToOnnx"
    requires = (
        "default ONNX opset >= 11; each ZapConv's output channel count is known from a constant W "
        "or PW1 (its spatial size may be dynamic)"
    )

    def __init__(self, expose_masks: bool = False) -> None:
        self.expose_masks = bool(expose_masks)

    def run(self, model: onnx.ModelProto) -> PassResult:
        if not any(is_native_node(n) for n in model.graph.node):
            return PassResult(model, False)
        opset = default_opset(model)
        if opset < MIN_OPSET:
            raise ZapoptError(
                f"the model uses ONNX opset {opset}; the portable expansion needs opset >= {MIN_OPSET} "
                "(convert it first with onnx.version_converter)"
            )
        inferred = onnx.shape_inference.infer_shapes(model)
        names = NameAllocator(model)
        while True:  # editing re-creates graph.node, so look the next node up afresh
            node = next((n for n in model.graph.node if is_native_node(n)), None)
            if node is None:
                break
            if is_zero_skip_node(node):
                self._expand_zero_skip(model, names, node)
            else:
                self._expand(model, inferred, GraphIndex(model.graph), names, node)
        drop_opset(model, DOMAIN)
        onnx.checker.check_model(model)
        return PassResult(model, True)

    def _expand(
        self,
        model: onnx.ModelProto,
        inferred: onnx.ModelProto,
        index: GraphIndex,
        names: NameAllocator,
        node: onnx.NodeProto,
    ) -> None:
        label = node.name or node.output[0]
        attrs = ZapConvAttrs.from_node(node)
        inputs = list(node.input) + [""] * (8 - len(node.input))
        x, w, b, pw1, pb1, pw2, pb2, skip = inputs
        c_out = self._channels(index, model, w, pw1, label)
        out_hw = self._output_hw(inferred, node, attrs, index)
        g = _Builder(model, names, label, self.name)

        conv_attrs = dict(
            strides=list(attrs.strides), pads=list(attrs.pads), dilations=list(attrs.dilations), group=attrs.group
        )
        v = g.op("Conv", [x, w, b] if b else [x, w], "V", **conv_attrs)
        if skip:
            v = g.op("Add", [v, skip], "V_skip")
        full = g.activation(v, attrs.clip_max, "Full")

        s_float, s_bool = self._pattern_mask(g, attrs, out_hw, full)
        source = v if attrs.predictor_input == "preactivation" else full
        partial = g.op("Mul", [source, s_float], "P")
        depthwise = dict(group=c_out, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1])
        hidden = g.op("Relu", [g.op("Conv", [partial, pw1, pb1], "H1", **depthwise)], "Hd")
        score = g.op("Conv", [hidden, pw2, pb2], "Z", **depthwise)
        predicted = g.op("Greater", [score, g.const("threshold", np.array(attrs.threshold, np.float32))], "predicted")

        declared = node.output[1] if len(node.output) > 1 and node.output[1] else None
        mask_name = declared or (self._mask_name(names, label) if self.expose_masks else None)
        computed = g.op("Or", [s_bool, predicted], "Computed", output=mask_name)
        g.op("Where", [computed, full, g.const("zero", np.array(0.0, np.float32))], "Y", output=node.output[0],
             native=node)

        replace_nodes(model.graph, [node], g.nodes, at=node)
        if self.expose_masks and computed not in {o.name for o in model.graph.output}:
            y_shape = tensor_shape(inferred, node.output[0])
            dims = list(y_shape) if y_shape is not None and len(y_shape) == 4 else [None] * 4
            model.graph.output.append(helper.make_tensor_value_info(computed, onnx.TensorProto.BOOL, dims))

    def _expand_zero_skip(self, model: onnx.ModelProto, names: NameAllocator, node: onnx.NodeProto) -> None:
        """ZeroSkipConv is exact: its portable form is the Conv [+Add] [+activation] it replaced."""
        label = node.name or node.output[0]
        attrs = ZeroSkipConvAttrs.from_node(node)
        x, w, b, skip = (list(node.input) + [""] * 4)[:4]
        g = _Builder(model, names, label, self.name)
        conv_attrs = dict(
            strides=list(attrs.strides), pads=list(attrs.pads), dilations=list(attrs.dilations), group=attrs.group
        )
        steps = ["Conv"] + (["Add"] if skip else []) + (["act"] if attrs.activation == "relu" else [])
        y = node.output[0]

        def out(step: str) -> tuple[str | None, onnx.NodeProto | None]:
            return (y, node) if step == steps[-1] else (None, None)

        v = g.op("Conv", [x, w, b] if b else [x, w], "V", *out("Conv"), **conv_attrs)
        if skip:
            v = g.op("Add", [v, skip], "V_skip", *out("Add"))
        if attrs.activation == "relu":
            g.activation(v, attrs.clip_max, "Y", *out("act"))
        replace_nodes(model.graph, [node], g.nodes, at=node)

    @staticmethod
    def _mask_name(names: NameAllocator, label: str) -> str:
        """Exactly ``mask_output_name(label)``: callers find the mask by that name."""
        wanted = mask_output_name(label)
        if wanted in names.taken:
            raise ZapoptError(
                f"cannot expose the mask of ZapConv {label!r}: the model already has a tensor or node named {wanted!r}"
            )
        names.taken.add(wanted)
        return wanted

    @staticmethod
    def _channels(index: GraphIndex, model: onnx.ModelProto, w: str, pw1: str, label: str) -> int:
        for name in (w, pw1):
            value = index.constant_value(name)
            if value is not None:
                return int(value.shape[0])
            shape = tensor_shape(model, name)
            if shape and isinstance(shape[0], int) and shape[0] > 0:
                return shape[0]
        raise ZapoptError(f"ZapConv {label!r}: cannot tell its output channel count (W and PW1 have no static shape)")

    @staticmethod
    def _output_hw(
        inferred: onnx.ModelProto, node: onnx.NodeProto, attrs: ZapConvAttrs, index: GraphIndex
    ) -> tuple[int, int] | None:
        """Static ``(H_out, W_out)`` from declared shapes, else None (mask built at run time)."""
        y_shape = tensor_shape(inferred, node.output[0])
        if y_shape is not None and len(y_shape) == 4 and all(isinstance(d, int) and d > 0 for d in y_shape[2:]):
            return int(y_shape[2]), int(y_shape[3])
        x_shape = tensor_shape(inferred, node.input[0])
        weight = index.constant_value(node.input[1])
        if x_shape is None or weight is None or len(x_shape) != 4:
            return None
        if not all(isinstance(d, int) and d > 0 for d in x_shape[2:]):
            return None
        kh, kw = weight.shape[2:]
        return (
            conv_output_size(x_shape[2], kh, attrs.strides[0], attrs.pads[0], attrs.pads[2], attrs.dilations[0]),
            conv_output_size(x_shape[3], kw, attrs.strides[1], attrs.pads[1], attrs.pads[3], attrs.dilations[1]),
        )

    @staticmethod
    def _pattern_mask(g: _Builder, attrs: ZapConvAttrs, out_hw: tuple[int, int] | None, like: str) -> tuple[str, str]:
        """``S`` as float ``[1,1,H,W]`` and bool: a constant if H, W are static, else tiled at run time."""
        pattern = attrs.pattern
        if out_hw is not None:
            mask = pattern.mask(*out_hw)[None, None]
            return g.const("S", mask.astype(np.float32)), g.const("S_bool", mask)
        th, tw = pattern.shape
        i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
        shape = g.op("Shape", [like], "shape")
        hw_range = [g.const("hw_start", i64(2)), g.const("hw_end", i64(4)), g.const("hw_axis", i64(0))]
        hw = g.op("Slice", [shape, *hw_range], "hw")
        rounded_up = g.op("Add", [hw, g.const("tile_minus_1", i64(th - 1, tw - 1))], "hw_up")
        reps_hw = g.op("Div", [rounded_up, g.const("tile_hw", i64(th, tw))], "reps_hw")
        reps = g.op("Concat", [g.const("ones2", i64(1, 1)), reps_hw], "reps", axis=0)
        tile = pattern.tile_array().astype(np.float32)[None, None]
        big = g.op("Tile", [g.const("tile", tile), reps], "S_tiled")
        s_float = g.op("Slice", [big, g.const("zeros2", i64(0, 0)), hw, g.const("axes_hw", i64(2, 3))], "S")
        s_bool = g.op("Cast", [s_float], "S_bool", to=onnx.TensorProto.BOOL)
        return s_float, s_bool
