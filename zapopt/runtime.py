"""Run any model zapopt reads or writes in onnxruntime.

Until a native ZapConv kernel is registered, a model with ZapConv nodes runs in its
portable form: every ZapConv is expanded into standard ONNX ops in memory (computing the
whole layer and masking it). ``expose_masks=True`` adds each layer's ``Computed`` mask as
an extra output, which is how realised savings are measured on data.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from zapopt.errors import ZapoptError
from zapopt.ops.spec import is_zap_node
from zapopt.rewrite.expand import ExpandZapToOnnx
from zapopt.rewrite.zap_layers import read_zap_layers


def has_zap_nodes(model: onnx.ModelProto) -> bool:
    """Whether the model contains ZapConv nodes (needs expansion or our op library)."""
    return any(is_zap_node(node) for node in model.graph.node)


@dataclass(frozen=True)
class PreparedModel:
    """A model ready for stock onnxruntime and where to find each ZAP layer's mask."""

    model: onnx.ModelProto
    mask_outputs: dict[str, str]  # ZapConv layer name -> graph output holding its mask
    layer_outputs: dict[str, str]  # ZapConv layer name -> graph output holding its Y
    output_names: tuple[str, ...]  # the original model outputs, in order


def prepare(model: onnx.ModelProto, *, expose_masks: bool = False) -> PreparedModel:
    """Expand ZapConv nodes (if any) so stock onnxruntime can run the model."""
    outputs = tuple(o.name for o in model.graph.output)
    if not has_zap_nodes(model):
        return PreparedModel(model, {}, {}, outputs)
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


def make_session(model: onnx.ModelProto, *, threads: int | None = None,
                 optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                 ) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` (bytes in memory, nothing written)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ZapoptError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


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
