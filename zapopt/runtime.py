"""Run any model zapopt reads or writes in onnxruntime.

A model with zapopt's native ops (ZapConv, ZeroSkipConv) runs natively when zapopt's op
library is built (``zapopt.get_library_path()``); sessions register it themselves. Without
it, every native node is expanded into standard ONNX ops in memory (the portable form:
same outputs, no speed-up), with a one-line note. ``expose_masks=True`` adds each ZAP
layer's ``Computed`` mask as an extra output, natively through ZapConv's optional second
output, which is how realised savings are measured on data. ``ZAPOPT_NATIVE=0`` forces
the portable form.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort

from zapopt.errors import ZapoptError
from zapopt.ops.spec import is_zap_node
from zapopt.rewrite.expand import ExpandZapToOnnx, mask_output_name
from zapopt.rewrite.graph_edit import is_native_node
from zapopt.rewrite.zap_layers import read_zap_layers

#: Environment variable: "0" runs native models in their portable form even with the library.
NATIVE_ENV = "ZAPOPT_NATIVE"
REGISTER_HINT = ("register zapopt's op library first: "
                 "options.register_custom_ops_library(zapopt.get_library_path()), or use zapopt.session(path); "
                 "or convert the model with `zapopt convert MODEL -o OUT --to portable`")


def has_zap_nodes(model: onnx.ModelProto) -> bool:
    """Whether the model contains ZapConv nodes."""
    return any(is_zap_node(node) for node in model.graph.node)


def has_native_nodes(model: onnx.ModelProto) -> bool:
    """Whether the model contains zapopt's native ops (needs our library or the expansion)."""
    return any(is_native_node(node) for node in model.graph.node)


@lru_cache(maxsize=1)
def _built_library() -> str | None:
    try:
        import zapopt

        path = zapopt.get_library_path()
    except Exception:  # not built yet, or built for another platform: the portable form still runs
        return None
    return str(path) if path and os.path.isfile(path) else None


def native_library() -> str | None:
    """The path of zapopt's op library when it is built and enabled here, else None."""
    if os.environ.get(NATIVE_ENV, "1").strip() == "0":
        return None
    return _built_library()


@lru_cache(maxsize=1)
def _note_portable_fallback() -> None:
    why = (f"{NATIVE_ENV}=0 is set" if os.environ.get(NATIVE_ENV, "1").strip() == "0"
           else "zapopt's native op library is not available here")
    print(f"note: {why}; running the portable form (same outputs, no speed-up)", file=sys.stderr)


@dataclass(frozen=True)
class PreparedModel:
    """A model ready for stock onnxruntime and where to find each ZAP layer's mask."""

    model: onnx.ModelProto
    mask_outputs: dict[str, str]  # ZapConv layer name -> graph output holding its mask
    layer_outputs: dict[str, str]  # ZapConv layer name -> graph output holding its Y
    output_names: tuple[str, ...]  # the original model outputs, in order
    native: bool = False  # runs zapopt's native ops (needs the library registered)


def prepare(model: onnx.ModelProto, *, expose_masks: bool = False, native: bool | None = None) -> PreparedModel:
    """The model ready to run: native ops kept when the library is available (``native=None``)
    or asked for (``True``), else expanded so stock onnxruntime runs it (``False``)."""
    outputs = tuple(o.name for o in model.graph.output)
    if not has_native_nodes(model):
        return PreparedModel(model, {}, {}, outputs)
    library = native_library()
    if native and library is None:
        raise ZapoptError(f"this model's native ops need zapopt's op library, which is not available; {REGISTER_HINT}")
    if native is None:
        native = library is not None
        if not native:
            _note_portable_fallback()
    if native:
        return _with_native_masks(model, outputs) if expose_masks else PreparedModel(model, {}, {}, outputs, True)
    layers = read_zap_layers(model)
    expanded = ExpandZapToOnnx(expose_masks=expose_masks)(model).model  # a pass works on its own copy
    masks: dict[str, str] = {}
    if expose_masks:
        graph_outputs = {o.name for o in expanded.graph.output}
        from zapopt.rewrite.expand import mask_output_name

        for layer in layers:
            name = layer.computed_output or mask_output_name(layer.name)
            if name not in graph_outputs:
                raise ZapoptError(f"internal: mask output {name!r} of layer {layer.name!r} not exposed")
            masks[layer.name] = name
            if layer.output not in graph_outputs:
                expanded.graph.output.append(
                    onnx.helper.make_tensor_value_info(layer.output, onnx.TensorProto.FLOAT, None))
                graph_outputs.add(layer.output)
    return PreparedModel(expanded, masks, {layer.name: layer.output for layer in layers}, outputs)


def _with_native_masks(model: onnx.ModelProto, outputs: tuple[str, ...]) -> PreparedModel:
    """A copy whose ZapConv nodes write their optional ``Computed`` output, exposed (with
    each layer's ``Y``) as graph outputs."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    taken = {name for node in work.graph.node for name in (*node.input, *node.output)}
    taken |= {t.name for t in work.graph.initializer}
    graph_outputs = {o.name for o in work.graph.output}
    masks: dict[str, str] = {}
    layer_outputs: dict[str, str] = {}
    for node in work.graph.node:
        if not is_zap_node(node):
            continue
        label = node.name or node.output[0]
        if len(node.output) > 1 and node.output[1]:
            mask = node.output[1]
        else:
            mask = mask_output_name(label)
            if mask in taken:
                raise ZapoptError(f"cannot expose the mask of ZapConv {label!r}: the model already has a tensor "
                                  f"named {mask!r}")
            node.output.append(mask)
        masks[label], layer_outputs[label] = mask, node.output[0]
        for name, elem in ((mask, onnx.TensorProto.BOOL), (node.output[0], onnx.TensorProto.FLOAT)):
            if name not in graph_outputs:
                work.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
                graph_outputs.add(name)
    return PreparedModel(work, masks, layer_outputs, outputs, True)


def make_session(model: onnx.ModelProto, *, threads: int | None = None,
                 optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                 profile_prefix: str | None = None, optimized_model_path: str | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` (bytes in memory, nothing written); zapopt's
    op library is registered (by ``zapopt.native.session_options``) when the model has native
    ops. ``profile_prefix``: write onnxruntime's per-node profile there (see
    ``session.end_profiling()``); ``optimized_model_path``: save the graph onnxruntime will
    run there."""
    from zapopt.native import open_session, session_options

    native = has_native_nodes(model)
    if native and native_library() is None:
        raise ZapoptError(f"the model has zapopt's native ops (ai.zapopt ZapConv/ZeroSkipConv); {REGISTER_HINT}")
    extra = {} if profile_prefix is None else {"enable_profiling": True, "profile_file_prefix": profile_prefix}
    if optimized_model_path is not None:
        extra["optimized_model_filepath"] = optimized_model_path
    options = session_options(threads=threads, optimization=optimization, register_library=native,
                              log_severity_level=3, **extra)
    return open_session(model.SerializeToString(), options)


def feed_name(session: ort.InferenceSession) -> str:
    """The single data input of a session (initializer-backed inputs excluded)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ZapoptError(f"zapopt supports models with one input; this one has {len(inputs)}: {names}")
    return inputs[0].name


def fixed_batch_size(session: ort.InferenceSession) -> int | None:
    """The batch size the model's data input is declared with, or None when it is dynamic."""
    dim = session.get_inputs()[0].shape[0] if session.get_inputs() and session.get_inputs()[0].shape else None
    return dim if isinstance(dim, int) and dim > 0 else None


def run_batch(session: ort.InferenceSession, name: str, batch: np.ndarray, outputs: list[str],
              fixed: int | None = None) -> list[np.ndarray]:
    """Run one batch of any length. A model with a fixed batch size ``fixed`` (what exporters
    write without dynamic axes) gets it in pieces of exactly that size, the last one padded
    by repeating its last sample; the padded samples' outputs are dropped, so every output
    keeps one row per sample. onnxruntime's own errors propagate."""
    n = batch.shape[0]
    if fixed is None or n == fixed:
        return session.run(outputs, {name: batch})
    pieces: list[list[np.ndarray]] = []
    for start in range(0, n, fixed):
        piece = batch[start:start + fixed]
        real = piece.shape[0]
        if real < fixed:
            piece = np.concatenate([piece, np.repeat(piece[-1:], fixed - real, axis=0)])
        results = session.run(outputs, {name: piece})
        pieces.append([r[:real] if r.ndim and r.shape[0] == fixed else r for r in results])
    if len(pieces) == 1:
        return pieces[0]
    return [np.concatenate(parts, axis=0) for parts in zip(*pieces)]


def run_batches(session: ort.InferenceSession, batches: Iterator[np.ndarray],
                outputs: list[str]) -> Iterator[list[np.ndarray]]:
    """Run ``session`` on each batch, yielding the requested outputs (one row per sample,
    also for a model with a fixed batch size: see :func:`run_batch`)."""
    name = feed_name(session)
    fixed = fixed_batch_size(session)
    for batch in batches:
        try:
            yield run_batch(session, name, batch, outputs, fixed)
        except Exception as exc:  # onnxruntime's own error types
            raise ZapoptError(f"onnxruntime failed on a batch of shape {batch.shape}: "
                              f"{str(exc).splitlines()[0]}") from None
