"""Static shapes for every tensor: user-given input shapes, dynamic batch = 1, ONNX inference.

MAC counts need concrete shapes, but exported models usually have a symbolic batch dim and
sometimes symbolic spatial dims. We fix the batch to 1 (and say so), let the user pin the
rest (``--input-shape input:1,3,224,224``), then run ONNX shape inference with data
propagation so that ``Shape -> Gather -> Concat -> Reshape`` chains resolve too.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from zapopt.errors import ZapoptError

Dim = int | str | None
"""One dimension: an int when known, the symbolic name (str) or None when not."""

#: The batch size assumed for a dynamic leading dimension nobody specified.
DEFAULT_BATCH = 1


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:D1,D2,...`` (the CLI's ``--input-shape``). Input names may contain ``:``
    (e.g. ``input:0``), so the last ``:`` separates name and dims."""
    name, sep, dims_text = text.rpartition(":")
    if not sep or not name or not dims_text.strip():
        raise ZapoptError(f"bad input shape {text!r}: expected NAME:D1,D2,... such as input:1,3,224,224")
    try:
        dims = tuple(int(d) for d in dims_text.split(","))
    except ValueError:
        raise ZapoptError(
            f"bad input shape {text!r}: dims must be comma-separated integers, e.g. input:1,3,224,224"
        ) from None
    if any(d <= 0 for d in dims):
        raise ZapoptError(f"bad input shape {text!r}: every dim must be a positive integer")
    return name, dims


def dims_of(value_type: onnx.TypeProto) -> tuple[Dim, ...] | None:
    """The dims of a tensor type, or None when even the rank is unknown."""
    if not value_type.HasField("tensor_type") or not value_type.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in value_type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def is_static(dims: Sequence[Dim] | None) -> bool:
    return dims is not None and all(isinstance(d, int) and d >= 0 for d in dims)


def dtype_name(elem_type: int) -> str:
    if elem_type == TensorProto.UNDEFINED:
        return "undefined"
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return TensorProto.DataType.Name(elem_type).lower()


def _set_dims(value_info: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        shape.dim.add().dim_value = int(d)


def apply_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None,
                       data_inputs: Sequence[str]) -> list[str]:
    """Pin the data inputs of ``model`` (modified in place; pass a copy) to concrete shapes.

    User shapes must name real inputs and agree with the rank and the static dims the model
    declares. A dynamic leading dim left unspecified becomes ``DEFAULT_BATCH``. Returns
    human-readable notes about every assumption made.
    """
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        raise TypeError(f"input_shapes must map input names to shapes, e.g. "
                        f"{{'input': [1, 3, 224, 224]}}, not {type(input_shapes).__name__}")
    input_shapes = dict(input_shapes or {})
    by_name = {vi.name: vi for vi in model.graph.input}
    unknown = sorted(set(input_shapes) - set(data_inputs))
    if unknown:
        raise ZapoptError(
            f"input shape given for {', '.join(map(repr, unknown))}, but the model's inputs are "
            f"{', '.join(map(repr, data_inputs)) or '(none)'}"
        )
    notes: list[str] = []
    changed = False
    declared_by_name = {name: dims_of(by_name[name].type) for name in data_inputs}
    for name in data_inputs:
        value_info = by_name[name]
        declared = declared_by_name[name]
        if name in input_shapes:
            given = tuple(int(d) for d in input_shapes[name])
            if any(d <= 0 for d in given):
                raise ZapoptError(f"input shape for {name!r} must be positive integers, got {list(given)}")
            if declared is not None and len(declared) != len(given):
                raise ZapoptError(
                    f"input {name!r} has rank {len(declared)} ({_format_dims(declared)}), "
                    f"but the given shape {list(given)} has rank {len(given)}"
                )
            for axis, (have, want) in enumerate(zip(declared or (), given)):
                if isinstance(have, int) and have > 0 and have != want:
                    raise ZapoptError(
                        f"input {name!r} has fixed size {have} on axis {axis} "
                        f"({_format_dims(declared)}); the given shape {list(given)} disagrees"
                    )
            _set_dims(value_info, given)
            changed = True
        elif declared and not (isinstance(declared[0], int) and declared[0] > 0):
            label = f"dim {declared[0]!r}" if isinstance(declared[0], str) else "dynamic dim"
            notes.append(f"input {name!r}: assumed batch size {DEFAULT_BATCH} for its {label} "
                         f"(set it with --input-shape)")
            value_info.type.tensor_type.shape.dim[0].Clear()
            value_info.type.tensor_type.shape.dim[0].dim_value = DEFAULT_BATCH
            changed = True
    if changed:
        pinned = {}
        for name in data_inputs:
            declared_dims = declared_by_name[name]
            for have, dim in zip(declared_dims or (), by_name[name].type.tensor_type.shape.dim):
                if isinstance(have, str) and dim.HasField("dim_value"):
                    pinned[have] = dim.dim_value
        batches = {by_name[name].type.tensor_type.shape.dim[0].dim_value for name in data_inputs
                   if len(by_name[name].type.tensor_type.shape.dim) >= 4}
        _refresh_value_info(model.graph, pinned, batches.pop() if len(batches) == 1 else None)
    return notes


def _refresh_value_info(graph: onnx.GraphProto, pinned: Mapping[str, int], batch: int | None = None) -> None:
    """Forget the exporter's intermediate shapes (they could contradict the pinned inputs),
    except outputs of custom-domain ops, which shape inference cannot recompute: there,
    symbolic dims shared with a pinned input (e.g. ``batch``) take the pinned value, and a
    leading dim inference left anonymous (``unk__3``) on a 4-D output is taken as the
    image batch ``batch`` (CNN feature maps keep the batch axis first)."""
    custom_outputs = {out for node in graph.node if node.domain not in ("", "ai.onnx") for out in node.output}
    kept = [vi for vi in graph.value_info if vi.name in custom_outputs]
    for value_info in kept:
        dims = value_info.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            value = None
            if dim.HasField("dim_param") and dim.dim_param in pinned:
                value = pinned[dim.dim_param]
            elif (axis == 0 and batch and len(dims) == 4 and not dim.HasField("dim_value")
                  and (not dim.dim_param or dim.dim_param.startswith("unk__"))):
                value = batch
            if value is not None:
                dim.Clear()
                dim.dim_value = value
    graph.ClearField("value_info")
    graph.value_info.extend(kept)


def _format_dims(dims: Sequence[Dim] | None) -> str:
    if dims is None:
        return "unknown shape"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


@dataclass(frozen=True)
class InferredShapes:
    """Shapes and element types of every tensor the inferred model knows about."""

    dims: dict[str, tuple[Dim, ...] | None]
    elem_types: dict[str, int]
    strict_error: str
    """The message of strict shape inference when it failed and we fell back to lenient."""

    def shape(self, tensor: str) -> tuple[Dim, ...] | None:
        return self.dims.get(tensor)

    def static_shape(self, tensor: str) -> tuple[int, ...] | None:
        dims = self.dims.get(tensor)
        return tuple(int(d) for d in dims) if is_static(dims) else None  # type: ignore[arg-type]

    def describe(self, tensor: str) -> str:
        return _format_dims(self.dims.get(tensor))


#: Rounds of "fold shape arithmetic, re-infer"; each round resolves one more Reshape level.
MAX_FOLD_ROUNDS = 8


def _run_inference(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Strict inference first; if it rejects the model (e.g. an op it cannot type), fall
    back to lenient inference and return strict inference's complaint with it."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                 data_prop=True), ""
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        strict_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True), strict_error
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        raise ZapoptError(f"ONNX shape inference failed: {str(exc).strip().splitlines()[0]}") from None


def _collect(graph: onnx.GraphProto, strict_error: str) -> InferredShapes:
    dims: dict[str, tuple[Dim, ...] | None] = {}
    elem_types: dict[str, int] = {}
    for value_info in [*graph.input, *graph.value_info, *graph.output]:
        if value_info.type.HasField("tensor_type"):
            dims[value_info.name] = dims_of(value_info.type)
            elem_types[value_info.name] = value_info.type.tensor_type.elem_type
    for tensor in graph.initializer:
        dims[tensor.name] = tuple(int(d) for d in tensor.dims)
        elem_types[tensor.name] = tensor.data_type
    for node in graph.node:
        if node.op_type == "Constant" and node.output and not is_static(dims.get(node.output[0])):
            for attr in node.attribute:
                if attr.name == "value":
                    dims[node.output[0]] = tuple(int(d) for d in attr.t.dims)
                    elem_types[node.output[0]] = attr.t.data_type
    return InferredShapes(dims=dims, elem_types=elem_types, strict_error=strict_error)


def _all_static(graph: onnx.GraphProto, shapes: InferredShapes) -> bool:
    return all(is_static(shapes.shape(out)) for node in graph.node for out in node.output if out)


def infer_shapes(model: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, InferredShapes]:
    """(the model with inferred value_info, shapes of every tensor). Where ONNX inference
    leaves shapes open, shape arithmetic is folded on a copy and inference repeated."""
    from zapopt.graph.folding import fold_shape_computations

    inferred, strict_error = _run_inference(model)
    shapes = _collect(inferred.graph, strict_error)
    work = inferred
    for _ in range(MAX_FOLD_ROUNDS):
        if _all_static(inferred.graph, shapes):
            break
        work, changed = fold_shape_computations(work, shapes.static_shape, opset)
        if not changed:
            break
        work, _ = _run_inference(work)
        shapes = _collect(work.graph, strict_error)
    return inferred, shapes
