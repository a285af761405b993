"""ONNX model (with ZapConv nodes) -> trainable torch module, and its weights back into ONNX.

The module runs the ONNX graph node by node: weighted nodes (Conv, Gemm,
BatchNormalization, ZapConv) become torch modules whose parameters remember the
initializer they came from, every other known op is a function from ``onnx_ops``.
:func:`export_weights` writes the trained parameters into a copy of the original model
under the same initializer names, so the result is the same graph (same nodes,
thresholds, predictors, attributes) with new weights.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from zapopt.errors import ZapoptError
from zapopt.finetuning.onnx_ops import STATELESS_OPS, check_node
from zapopt.finetuning.zap_module import PaddedConv2d, ZapConv2d, ZeroSkipConv2d
from zapopt.ops.spec import ZapConvAttrs, ZeroSkipConvAttrs, is_zap_node, is_zero_skip_node

WEIGHTED_OPS = ("Conv", "Gemm", "BatchNormalization", "ZapConv", "ZeroSkipConv")
KNOWN_OPS = tuple(sorted(set(STATELESS_OPS) | set(WEIGHTED_OPS) | {"Constant"}))


@dataclass(frozen=True)
class ParameterSource:
    """Where a trainable parameter lives in the ONNX model: its initializer and layout."""

    module_key: str
    parameter: str  # attribute path inside the node module, e.g. "padded.conv.weight"
    initializer: str
    transposed: bool = False  # Gemm with transB=0 stores the weight as [in, out]


@dataclass(frozen=True)
class _Step:
    key: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


class _GemmLinear(nn.Module):
    """ONNX ``Gemm`` with a constant B as an ``nn.Linear`` (gradtools hooks nn.Linear outputs)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, alpha: float, beta: float,
                 trans_a: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        self.alpha, self.beta, self.trans_a = alpha, beta, trans_a
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
            if bias is not None:
                self.linear.bias.copy_(torch.from_numpy(np.broadcast_to(bias, (weight.shape[0],)).copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trans_a:
            x = x.t()
        if self.alpha == 1.0 and self.beta == 1.0:
            return self.linear(x)
        out = self.alpha * F.linear(x, self.linear.weight)
        return out if self.linear.bias is None else out + self.beta * self.linear.bias


class _FrozenStatsBatchNorm(nn.Module):
    """Inference-mode BatchNormalization: running statistics fixed, scale and bias trainable.

    Fine-tuning a deployed model keeps its statistics (the paper refreshes them once before
    fine-tuning; zapopt's ZapConv layers have theirs folded into the weights already).
    """

    def __init__(self, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(scale.copy()))
        self.bias = nn.Parameter(torch.from_numpy(bias.copy()))
        self.register_buffer("running_mean", torch.from_numpy(mean.copy()))
        self.register_buffer("running_var", torch.from_numpy(var.copy()))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _module_key(name: str, op_type: str, index: int, taken: set[str]) -> str:
    key = re.sub(r"\W+", "_", name).strip("_") or f"{op_type}_{index}"
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class ConvertedModel(nn.Module):
    """A torch module computing the ONNX graph's first output from its one data input."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        self.constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        data_inputs = [i.name for i in graph.input if i.name not in self.constants]
        if len(data_inputs) != 1:
            raise ZapoptError(f"finetune needs a model with one data input; this one has {len(data_inputs)}: "
                              f"{', '.join(data_inputs)}")
        self.input_name = data_inputs[0]
        self.output_name = graph.output[0].name
        self.layers = nn.ModuleDict()
        self.sources: list[ParameterSource] = []
        self._steps: list[_Step] = []
        self._buffer_names: dict[str, str] = {}
        #: module key -> ONNX node name, for every weighted node
        self.node_names: dict[str, str] = {}
        self._check_ops(graph)
        graph_outputs = {o.name for o in graph.output}
        consumed = Counter(name for node in graph.node for name in node.input if name)
        taken: set[str] = set()
        for index, node in enumerate(graph.node):
            attrs = _attrs(node)
            if node.op_type == "Constant":
                self._constant_node(node, attrs)
                continue
            outputs_used = sum(1 for o in node.output if o and (consumed[o] or o in graph_outputs))
            check_node(node.name, node.op_type, attrs, outputs_used)
            key = _module_key(node.name, node.op_type, index, taken)
            if node.op_type in WEIGHTED_OPS:
                self.layers[key] = self._weighted_module(key, node, attrs)
                self.node_names[key] = node.name
            self._steps.append(_Step(key, node.op_type, tuple(node.input), tuple(node.output[:1]), attrs))
        self._check_shared_weights()
        self._register_constants()
        self.constants = {}  # now held by the parameters and buffers

    # ---------------------------------------------------------------- building
    @staticmethod
    def _check_ops(graph: onnx.GraphProto) -> None:
        unknown = sorted({f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in graph.node
                          if not (n.op_type in KNOWN_OPS and (n.domain in ("", "ai.onnx") or is_zap_node(n) or is_zero_skip_node(n)))})
        if unknown:
            raise ZapoptError(f"finetune cannot convert op(s) {', '.join(unknown)} to torch; it knows "
                              f"{', '.join(KNOWN_OPS)}")

    def _constant_node(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        if "value" not in attrs:
            raise ZapoptError(f"Constant node {node.name!r} uses {sorted(attrs)}; finetune reads 'value' only")
        self.constants[node.output[0]] = numpy_helper.to_array(attrs["value"])

    def _weight(self, node: onnx.NodeProto, slot: int, what: str) -> np.ndarray | None:
        if len(node.input) <= slot or not node.input[slot]:
            return None
        name = node.input[slot]
        if name not in self.constants:
            raise ZapoptError(f"node {node.name!r} ({node.op_type}): its {what} {name!r} is computed, not a "
                              "constant; finetune trains constant weights only")
        array = self.constants[name]
        if array.dtype != np.float32:
            raise ZapoptError(f"node {node.name!r}: its {what} {name!r} is {array.dtype}; finetune needs float32")
        return array

    def _source(self, key: str, parameter: str, node: onnx.NodeProto, slot: int, transposed: bool = False) -> None:
        if len(node.input) > slot and node.input[slot]:
            self.sources.append(ParameterSource(key, parameter, node.input[slot], transposed))

    def _weighted_module(self, key: str, node: onnx.NodeProto, attrs: dict[str, Any]) -> nn.Module:
        op = node.op_type
        if op == "Conv":
            weight, bias = self._weight(node, 1, "weight"), self._weight(node, 2, "bias")
            if weight.ndim != 4:
                raise ZapoptError(f"node {node.name!r}: finetune supports 2-D convolutions only")
            module = PaddedConv2d(weight, bias, strides=tuple(attrs.get("strides", (1, 1))),
                                  pads=tuple(attrs.get("pads", (0, 0, 0, 0))),
                                  dilations=tuple(attrs.get("dilations", (1, 1))), group=int(attrs.get("group", 1)))
            self._source(key, "conv.weight", node, 1)
            self._source(key, "conv.bias", node, 2)
            return module
        if op == "ZapConv":
            zap_attrs = ZapConvAttrs.from_node(node)
            weight, bias = self._weight(node, 1, "weight W"), self._weight(node, 2, "bias B")
            predictor = tuple(self._weight(node, slot, name) for slot, name in
                              ((3, "PW1"), (4, "PB1"), (5, "PW2"), (6, "PB2")))
            if any(p is None for p in predictor):
                raise ZapoptError(f"ZapConv node {node.name!r} is missing predictor inputs PW1/PB1/PW2/PB2")
            module = ZapConv2d(weight, bias, predictor, zap_attrs)
            self._source(key, "padded.conv.weight", node, 1)
            self._source(key, "padded.conv.bias", node, 2)
            return module
        if op == "ZeroSkipConv":
            module = ZeroSkipConv2d(self._weight(node, 1, "weight W"), self._weight(node, 2, "bias B"),
                                    ZeroSkipConvAttrs.from_node(node))
            self._source(key, "padded.conv.weight", node, 1)
            self._source(key, "padded.conv.bias", node, 2)
            return module
        if op == "Gemm":
            weight, bias = self._weight(node, 1, "weight B"), self._weight(node, 2, "bias C")
            trans_b = bool(attrs.get("transB", 0))
            module = _GemmLinear(weight if trans_b else np.ascontiguousarray(weight.T), bias,
                                 float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0)),
                                 bool(attrs.get("transA", 0)))
            self._source(key, "linear.weight", node, 1, transposed=not trans_b)
            if bias is not None and bias.shape == (module.linear.out_features,):
                self._source(key, "linear.bias", node, 2)
            elif bias is not None:
                raise ZapoptError(f"Gemm node {node.name!r} has a bias of shape {list(bias.shape)}; finetune "
                                  f"needs one value per output ({module.linear.out_features})")
            return module
        scale, bias, mean, var = (self._weight(node, s, w) for s, w in
                                  ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
        module = _FrozenStatsBatchNorm(scale, bias, mean, var, float(attrs.get("epsilon", 1e-5)))
        self._source(key, "weight", node, 1)
        self._source(key, "bias", node, 2)
        return module

    def _check_shared_weights(self) -> None:
        counts = Counter(s.initializer for s in self.sources)
        shared = sorted(name for name, n in counts.items() if n > 1)
        if shared:
            raise ZapoptError(f"initializer(s) {', '.join(shared)} feed several weighted nodes; finetune "
                              "trains each weight in one place only")

    def _register_constants(self) -> None:
        trained = {s.initializer for s in self.sources}
        for index, (name, array) in enumerate(self.constants.items()):
            if name in trained:
                continue
            buffer = f"const_{index}"
            self._buffer_names[name] = buffer
            self.register_buffer(buffer, torch.from_numpy(np.array(array)), persistent=False)

    # ---------------------------------------------------------------- running
    def zap_layers(self) -> dict[str, ZapConv2d]:
        """The ZapConv modules by ONNX node name."""
        return {self.node_names[key]: m for key, m in self.layers.items() if isinstance(m, ZapConv2d)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {self.input_name: x}

        def value(name: str) -> torch.Tensor | None:
            if not name:
                return None
            if name in values:
                return values[name]
            return getattr(self, self._buffer_names[name])

        for step in self._steps:
            if step.op_type in WEIGHTED_OPS:
                module = self.layers[step.key]
                data = value(step.inputs[0])
                if step.op_type in ("ZapConv", "ZeroSkipConv"):
                    slot = 7 if step.op_type == "ZapConv" else 3
                    skip = value(step.inputs[slot]) if len(step.inputs) > slot else None
                    out = module(data, skip)
                else:
                    out = module(data)
            else:
                out = STATELESS_OPS[step.op_type]([value(n) for n in step.inputs], step.attrs)
            values[step.outputs[0]] = out
        return values[self.output_name]


def to_torch(model: onnx.ModelProto) -> ConvertedModel:
    """Convert ``model``; raises ZapoptError naming the first thing it cannot convert."""
    return ConvertedModel(model)


def _parameter(module: ConvertedModel, source: ParameterSource) -> torch.Tensor:
    target: Any = module.layers[source.module_key]
    for part in source.parameter.split("."):
        target = getattr(target, part)
    return target


def export_weights(module: ConvertedModel, original: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``original`` whose trained initializers hold ``module``'s current weights."""
    if not isinstance(module, ConvertedModel):
        raise TypeError(f"export_weights needs the ConvertedModel from to_torch, got {type(module).__name__}")
    updated: dict[str, np.ndarray] = {}
    for source in module.sources:
        array = _parameter(module, source).detach().to("cpu", torch.float32).numpy()
        updated[source.initializer] = np.ascontiguousarray(array.T if source.transposed else array)
    result = onnx.ModelProto()
    result.CopyFrom(original)
    for init in result.graph.initializer:
        if init.name in updated:
            new = updated.pop(init.name)
            old_shape = tuple(init.dims)
            if new.shape != old_shape:
                raise ZapoptError(f"internal: trained {init.name} has shape {new.shape}, the model {old_shape}")
            init.CopyFrom(numpy_helper.from_array(new, init.name))
    if updated:
        raise ZapoptError(f"internal: no initializer named {', '.join(sorted(updated))} in the original model")
    return result

