"""Graph analysis: resolved shapes, per-layer MACs, and ZAP eligibility of every Conv."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import onnx
from onnx import external_data_helper

from zapopt.errors import ZapoptError
from zapopt.graph.conv_chain import match_conv_chain
from zapopt.graph.eligibility import MAX_PREDICTOR_COST_SHARE, conv_problems
from zapopt.graph.index import GraphIndex
from zapopt.graph.loading import PROTOBUF_LIMIT, load_model
from zapopt.graph.opset import default_opset
from zapopt.graph.macs import (conv_geometry, conv_macs, conv_transpose_macs,
                               gemm_macs, is_mac_op, matmul_macs)
from zapopt.graph.records import ConvActivation, LayerInfo, ModelInfo, TensorSpec
from zapopt.graph.shapes import (InferredShapes, apply_input_shapes, dims_of, dtype_name,
                                 infer_shapes, is_static)

IN_MEMORY_PATH = "<in-memory model>"


#: Initializers above this many elements are replaced by shape-only stubs for analysis.
_STUB_ABOVE_ELEMENTS = 1 << 16
_STUB_LOCATION = "zapopt-analysis-stub"


def _copy_fields(source, target, skip: str) -> None:
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        field = getattr(target, descriptor.name)
        if hasattr(field, "extend"):  # repeated field
            field.extend(value)
        elif hasattr(field, "CopyFrom"):  # message field
            field.CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers keep name, type and dims but no data.

    Analysis needs only weight shapes (and small constants: Clip bounds, Reshape targets),
    while shape inference would otherwise serialise every weight, several times over.
    """
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if math.prod(tensor.dims) <= _STUB_ABOVE_ELEMENTS or external_data_helper.uses_external_data(tensor):
            skeleton.graph.initializer.append(tensor)
            continue
        stub = skeleton.graph.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        entry = stub.external_data.add()
        entry.key, entry.value = "location", _STUB_LOCATION
    return skeleton


def _load(model_or_path: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str, Path | None]:
    """(a private, weight-free copy of the model, its path for reports, the dir holding
    external data)."""
    if isinstance(model_or_path, onnx.ModelProto):
        # Tensors left in external files cannot be checked without the model's directory.
        external = any(external_data_helper.uses_external_data(t)
                       for t in external_data_helper._get_all_tensors(model_or_path))
        if not external and model_or_path.ByteSize() < PROTOBUF_LIMIT:
            try:
                onnx.checker.check_model(model_or_path)
            except (onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ZapoptError(f"the given model is not a valid ONNX model: {first}") from None
        return _skeleton(model_or_path), IN_MEMORY_PATH, None
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        # External weights stay on disk: analysis needs only their shapes (and small constants).
        return _skeleton(load_model(path, load_external_data=False)), str(path), path.parent
    raise TypeError(f"analyze() takes an onnx.ModelProto or a path, not {type(model_or_path).__name__}")


class _ShapeResolver:
    """Static shapes for the MAC counter, with an actionable error when one is missing."""

    def __init__(self, index: GraphIndex, shapes: InferredShapes, input_specs: list[TensorSpec]):
        self.index, self.shapes, self.input_specs = index, shapes, input_specs

    def need(self, tensor: str, role: str, node_index: int) -> tuple[int, ...]:
        shape = self.shapes.static_shape(tensor)
        if shape is not None:
            return shape
        node = self.index.node(node_index)
        message = (f"cannot resolve the shape of {role} {tensor!r} of {node.op_type} node "
                   f"{self.index.names[node_index]!r} (got {self.shapes.describe(tensor)}); ")
        if all(is_static(s.shape) for s in self.input_specs):
            culprit = self._first_unresolved_producer(tensor)
            message += (f"ONNX shape inference cannot follow {culprit}; add the shapes of its "
                        f"outputs to the model's value_info")
        else:
            inputs = ", ".join(f"{s.name} {_dims_text(s.shape)}" for s in self.input_specs)
            message += (f"give static input shapes with --input-shape NAME:D1,D2,... "
                        f"(input_shapes= in Python); model inputs: {inputs}")
        if self.shapes.strict_error:
            message += f"; strict shape inference reported: {self.shapes.strict_error}"
        raise ZapoptError(message)

    def _first_unresolved_producer(self, tensor: str) -> str:
        """Walk back from ``tensor`` to the earliest node whose inputs all have static shapes
        but whose output does not: the op shape inference could not handle."""
        seen: set[str] = set()
        while tensor not in seen:
            seen.add(tensor)
            producer = self.index.producer_node(tensor)
            if producer is None:
                return f"tensor {tensor!r}"
            node = self.index.node(producer)
            pending = [t for t in node.input if t and self.shapes.static_shape(t) is None]
            if not pending:
                domain = f" (domain {node.domain})" if node.domain not in ("", "ai.onnx") else ""
                return f"{node.op_type} node {self.index.names[producer]!r}{domain}"
            tensor = pending[0]
        return f"tensor {tensor!r}"


def _dims_text(shape) -> str:
    if shape is None:
        return "[unknown]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _batch_size(declared: Mapping[str, tuple | None], specs: Sequence[TensorSpec], notes: list[str]) -> int:
    """The batch the MACs are divided by to get per-sample numbers.

    A leading dim counts as the batch when the model declares it dynamic (it is then 1 or
    what the user pinned) or when the input is 4-D (an image batch, NCHW or NHWC). A static
    2-D input like [32, 4] is ambiguous (Gemm with transA) and is not divided.
    """
    leading = set()
    for spec in specs:
        dims = declared.get(spec.name)
        if not spec.shape or not isinstance(spec.shape[0], int) or dims is None or not dims:
            continue
        if len(dims) == 4 or not (isinstance(dims[0], int) and dims[0] > 0):
            leading.add(spec.shape[0])
    if len(leading) == 1:
        return max(1, leading.pop())
    if len(leading) > 1:
        notes.append(f"inputs disagree on the batch size ({sorted(leading)}); MACs are for one run "
                     f"of the whole model, not per sample")
    return 1


def _mac_op_flags(index: GraphIndex) -> dict[str, bool]:
    """For each tensor: does any Conv/Gemm/MatMul run before it? (the graph is topologically
    sorted, which the ONNX checker guarantees)."""
    after_mac: dict[str, bool] = {}
    for node in index.graph.node:
        flag = is_mac_op(node) or any(after_mac.get(t, False) for t in node.input if t)
        for out in node.output:
            if out:
                after_mac[out] = flag
    return after_mac


def _node_macs(index: GraphIndex, resolver: _ShapeResolver, i: int) -> tuple[int, tuple, tuple]:
    """(MACs for the whole batch, data input shape, output shape) of one MAC op."""
    node = index.node(i)
    x = resolver.need(node.input[0], "input", i)
    y = resolver.need(node.output[0], "output", i)
    try:
        if node.op_type == "Conv":
            return conv_macs(y, resolver.need(node.input[1], "weight", i)), x, y
        if node.op_type == "ConvTranspose":
            return conv_transpose_macs(x, resolver.need(node.input[1], "weight", i)), x, y
        b = resolver.need(node.input[1], "input B", i)
        if node.op_type == "Gemm":
            return gemm_macs(node, x, b), x, y
        return matmul_macs(x, b), x, y
    except ValueError as exc:
        raise ZapoptError(f"{node.op_type} node {index.names[i]!r}: {exc}") from None


def _conv_record(index: GraphIndex, shapes: InferredShapes, resolver: _ShapeResolver, i: int,
                 macs: int, first_layer: bool, max_predictor_share: float) -> ConvActivation:
    node = index.node(i)
    name = index.names[i]
    x = resolver.need(node.input[0], "input", i)
    y = resolver.need(node.output[0], "output", i)
    w = resolver.need(node.input[1], "weight", i)
    try:
        geometry = conv_geometry(node, x[2:], w[2:])
    except ValueError as exc:
        raise ZapoptError(f"Conv node {name!r}: {exc}") from None
    problems = conv_problems(index, shapes, i, w, geometry.group, max_predictor_share)
    if geometry.output_spatial != tuple(y[2:]):
        problems.append(f"its attributes give an output of {list(geometry.output_spatial)} but shape "
                        f"inference says {list(y[2:])}, so its padding cannot be trusted")
    chain = match_conv_chain(index, i, shapes)
    problems.extend(chain.reasons)
    if chain.output is not None and shapes.static_shape(chain.output) is None:
        problems.append(f"no static output shape for its activation output {chain.output!r}")
    node_name = lambda k: None if k is None else index.names[k]  # noqa: E731
    return ConvActivation(
        conv=name, bn=node_name(chain.bn), add=node_name(chain.add), skip_input=chain.skip_input,
        act=node_name(chain.act), clip_max=chain.clip_max, output=chain.output,
        preactivation=chain.preactivation,
        conv_input=node.input[0], input_shape=x, output_shape=y, weight_shape=w,
        strides=geometry.strides, pads=geometry.pads, dilations=geometry.dilations,
        group=geometry.group, macs=macs, eligible=not problems, reason="; ".join(problems),
        first_layer=first_layer)


def _resolve_shared_activations(records: list[ConvActivation]) -> list[ConvActivation]:
    """Two convs can feed one residual Add (ResNet downsample blocks); only one of them can
    become the ZAP layer. Keep an eligible one if any, then the one with more MACs (ties:
    the earlier one)."""
    by_act: dict[str, list[int]] = {}
    for k, record in enumerate(records):
        if record.act is not None and record.add is not None:
            by_act.setdefault(record.act, []).append(k)
    result = list(records)
    for claimants in by_act.values():
        if len(claimants) < 2:
            continue
        winner = max(claimants, key=lambda k: (records[k].eligible, records[k].macs, -k))
        for k in claimants:
            if k == winner:
                continue
            r = records[k]
            reason = (f"its output is the residual input of Add {r.add!r}, whose ZAP layer is "
                      f"Conv {records[winner].conv!r} (only one conv per Add can be skipped)")
            reason = "; ".join(p for p in (r.reason, reason) if p)
            result[k] = replace(r, eligible=False, reason=reason)
    return result


def analyze(model_or_path: onnx.ModelProto | str | os.PathLike,
            input_shapes: Mapping[str, Sequence[int]] | None = None, *,
            max_predictor_share: float = MAX_PREDICTOR_COST_SHARE) -> ModelInfo:
    """Analyse a model: shapes, per-sample MACs per layer, ZAP eligibility of every Conv.

    ``input_shapes`` pins dynamic input dims (``{"input": [1, 3, 224, 224]}``); a dynamic
    batch dim nobody pinned is taken as 1 (recorded in ``ModelInfo.notes``). The file and
    the given ModelProto are never modified.
    """
    model, path_text, base_dir = _load(model_or_path)
    data_inputs = GraphIndex(model.graph).graph_inputs
    declared = {v.name: dims_of(v.type) for v in model.graph.input}
    notes = apply_input_shapes(model, input_shapes, data_inputs)
    inferred, shapes = infer_shapes(model, default_opset(model))
    index = GraphIndex(inferred.graph, base_dir=base_dir)

    def spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
        dims = shapes.shape(value_info.name) or dims_of(value_info.type)
        return TensorSpec(value_info.name, dims, dtype_name(value_info.type.tensor_type.elem_type))

    input_specs = [spec(v) for v in inferred.graph.input if v.name in set(data_inputs)]
    output_specs = [spec(v) for v in inferred.graph.output]
    batch = _batch_size(declared, input_specs, notes)
    resolver = _ShapeResolver(index, shapes, input_specs)
    after_mac = _mac_op_flags(index)

    per_node: list[tuple[int, int, tuple, tuple]] = []
    for i, node in enumerate(inferred.graph.node):
        if is_mac_op(node):
            full, x, y = _node_macs(index, resolver, i)
            per_node.append((i, full // batch if full % batch == 0 else round(full / batch), x, y))
    total = sum(m for _, m, _, _ in per_node)
    layers = [LayerInfo(name=index.names[i], op_type=index.node(i).op_type, input_shape=x,
                        output_shape=y, macs=m, share=m / total if total else 0.0)
              for i, m, x, y in per_node]
    convs = [_conv_record(index, shapes, resolver, i, m,
                          first_layer=not after_mac.get(index.node(i).input[0], False),
                          max_predictor_share=max_predictor_share)
             for i, m, _, _ in per_node if index.node(i).op_type == "Conv"]
    convs = _resolve_shared_activations(convs)
    return ModelInfo(
        path=path_text, opset=default_opset(model), inputs=input_specs, outputs=output_specs,
        layers=layers, convs=convs, total_macs=total,
        eligible_macs=sum(c.macs for c in convs if c.eligible), batch_size=batch, notes=notes)
