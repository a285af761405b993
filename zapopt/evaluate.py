"""``zapopt eval``: accuracy, agreement with the original, and realised MAC savings.

Realised savings come from the ``Computed`` masks each ZAP layer exposes (ZapConv's
optional output natively, or the expansion's mask in the portable form): a layer costs
``M * computed_share + 18 C H W`` MACs per image (``M`` = its conv MACs), exactly what a
kernel that skips the predicted zeros would do.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from zapopt.data import Dataset, ImageOptions, model_input, open_dataset
from zapopt.errors import ZapoptError
from zapopt.graph import analyze, load_model
from zapopt.graph.index import GraphIndex
from zapopt.model_form import as_native
from zapopt.ops.spec import PREDICTOR_MACS_PER_ACTIVATION, is_zero_skip_node
from zapopt.rewrite.graph_edit import tensor_shape
from zapopt.rewrite.zap_layers import read_zap_layers
from zapopt.progress import progress_bar
from zapopt.runtime import make_session, prepare, run_batches


@dataclass(frozen=True)
class LayerUsage:
    """What one ZAP layer computed on the evaluated data (MACs per image)."""

    name: str
    macs: int  # the conv's MACs without ZAP
    computed_share: float  # share of its output activations computed (pattern + predicted nonzero)
    nonzero_share: float  # share of its (ZAP) output activations that are nonzero, after skipping
    predictor_macs: int

    @property
    def macs_after(self) -> float:
        return self.macs * self.computed_share + self.predictor_macs


@dataclass(frozen=True)
class RunResult:
    """The first model output for every sample, and per-layer usage when measured."""

    outputs: np.ndarray
    usage: dict[str, LayerUsage] = field(default_factory=dict)


def _conv_macs(weight_shape: Sequence[int], mask_shape: Sequence[int]) -> int:
    c_out, c_in_per_group, kh, kw = weight_shape
    _, _, h, w = mask_shape
    return int(c_out * h * w * c_in_per_group * kh * kw)


def run_model(model: onnx.ModelProto, dataset: Dataset, *, batch_size: int = 64,
              measure: bool = True, threads: int | None = None, progress: bool | None = None,
              desc: str = "eval") -> RunResult:
    """Run ``model`` (ZapConv nodes expanded) on every sample; masks reduced batch by batch."""
    prepared = prepare(model, expose_masks=measure)
    session = make_session(prepared.model, threads=threads)
    layers = {layer.name: layer for layer in read_zap_layers(model)} if measure else {}
    mask_names = list(prepared.mask_outputs.items())
    # The computed masks and the layer outputs (for nonzero shares).
    fetch = [prepared.output_names[0], *[m for _, m in mask_names],
             *[prepared.layer_outputs[n] for n, _ in mask_names]]
    computed = {name: 0 for name, _ in mask_names}
    nonzero = {name: 0 for name, _ in mask_names}
    totals = {name: 0 for name, _ in mask_names}
    shapes: dict[str, tuple[int, ...]] = {}
    outputs = []
    bar = progress_bar(len(dataset), desc, "img", progress, leave=False)
    k = len(mask_names)
    try:
        for result in run_batches(session, dataset.batches(batch_size), fetch):
            outputs.append(np.asarray(result[0]))
            for j, (name, _) in enumerate(mask_names):
                mask, y = result[1 + j], result[1 + k + j]
                computed[name] += int(np.count_nonzero(mask))
                nonzero[name] += int(np.count_nonzero(y))
                totals[name] += mask.size
                shapes[name] = mask.shape
            bar.update(len(result[0]))
    finally:
        bar.close()
    usage = {}
    for name, _ in mask_names:
        layer = layers[name]
        if layer.weight_shape is None:
            raise ZapoptError(f"ZAP layer {name!r} has non-constant weights; cannot count its MACs")
        shape = shapes[name]
        per_image = int(np.prod(shape[1:]))
        usage[name] = LayerUsage(
            name=name,
            macs=_conv_macs(layer.weight_shape, shape),
            computed_share=computed[name] / totals[name],
            nonzero_share=nonzero[name] / totals[name],
            # at -inf a kernel computes everything and never runs the predictor
            predictor_macs=0 if layer.threshold == -math.inf else PREDICTOR_MACS_PER_ACTIVATION * per_image,
        )
    return RunResult(np.concatenate(outputs, axis=0), usage)


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the ``k`` largest logits."""
    if logits.ndim != 2:
        raise ZapoptError(f"accuracy needs [N, classes] outputs, the model gives {logits.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ZapoptError(f"labels must be class indices in [0, {logits.shape[1] - 1}] for this model's "
                          f"{logits.shape[1]} outputs; the data has labels from {labels.min()} to {labels.max()}")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


@dataclass(frozen=True)
class EvalReport:
    """Everything ``zapopt eval`` reports; MACs are per image."""

    model: str
    data: str
    samples: int
    top1: float | None
    top5: float | None
    reference_top1: float | None
    agreement: float | None  # top-1 agreement with the reference model
    output_rel_error: float | None  # ||y - y_ref|| / ||y_ref|| over all outputs
    total_macs: float
    macs_after: float
    layers: list[LayerUsage]

    @property
    def savings(self) -> float:
        return 1.0 - self.macs_after / self.total_macs if self.total_macs else 0.0

    @property
    def top1_drop(self) -> float | None:
        """Top-1 drop in percentage points against the reference (labels needed)."""
        if self.top1 is None or self.reference_top1 is None:
            return None
        return 100.0 * (self.reference_top1 - self.top1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": self.data, "samples": self.samples,
            "top1": self.top1, "top5": self.top5, "reference_top1": self.reference_top1,
            "top1_drop_pct": self.top1_drop, "agreement": self.agreement,
            "output_rel_error": self.output_rel_error,
            "total_macs": self.total_macs, "macs_after": self.macs_after, "savings": self.savings,
            "layers": [{"name": u.name, "macs": u.macs, "macs_after": u.macs_after,
                        "computed_share": u.computed_share, "nonzero_share": u.nonzero_share,
                        "predictor_macs": u.predictor_macs} for u in self.layers],
        }

    def format_table(self) -> str:
        from zapopt.report import format_rows, pct

        lines = [f"model: {self.model}", f"data:  {self.data} ({self.samples} samples)"]
        if self.top1 is not None:
            lines.append(f"top-1: {pct(self.top1)}   top-5: {pct(self.top5)}")
        if self.reference_top1 is not None:
            lines.append(f"reference top-1: {pct(self.reference_top1)}   drop: {self.top1_drop:.2f} points")
        if self.agreement is not None:
            lines.append(f"top-1 agreement with reference: {pct(self.agreement)}   "
                         f"output relative error: {self.output_rel_error:.3g}")
        lines.append(f"MACs per image: {self.total_macs:,.0f} -> {self.macs_after:,.0f} "
                     f"({pct(self.savings)} fewer, realised on this data)")
        if self.layers:
            rows = [(u.name, f"{u.macs:,}", f"{u.macs_after:,.0f}", pct(1 - u.macs_after / u.macs),
                     pct(u.computed_share), pct(u.nonzero_share)) for u in self.layers]
            lines += ["", format_rows(("layer", "MACs", "MACs after", "saved", "computed", "nonzero"), rows)]
        return "\n".join(lines)


def _load(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "<in-memory model>"
    return load_model(model), str(model)


def zero_skip_macs(model: onnx.ModelProto) -> int:
    """Dense conv MACs per image of the model's ZeroSkipConv nodes (exact ops, no masks)."""
    index = GraphIndex(model.graph)
    total = 0
    for node in model.graph.node:
        if not is_zero_skip_node(node):
            continue
        weight, shape = index.constant_value(node.input[1]), tensor_shape(model, node.output[0])
        if weight is None or shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise ZapoptError(f"ZeroSkipConv {node.name!r} has no constant weights or no static output shape; "
                              "cannot count its MACs")
        total += _conv_macs(weight.shape, shape)
    return total


def baseline_macs(model: onnx.ModelProto, usage: Mapping[str, LayerUsage],
                  input_shapes: Mapping[str, Sequence[int]] | None = None) -> float:
    """MACs per image of the model with every ZAP and zero-skip layer computed as a plain conv."""
    info = analyze(model, input_shapes)  # zapopt's ops (custom domain) count as 0 MACs there
    return float(info.total_macs + sum(u.macs for u in usage.values()) + zero_skip_macs(model))


def evaluate(model: onnx.ModelProto | str | os.PathLike, data: Any, *,
             reference: onnx.ModelProto | str | os.PathLike | None = None,
             image_options: ImageOptions | None = None, limit: int | None = None,
             batch_size: int = 64, input_shapes: Mapping[str, Sequence[int]] | None = None,
             progress: bool | None = None) -> EvalReport:
    """Evaluate ``model`` on ``data`` (any source ``open_dataset`` accepts).

    With labels: top-1/top-5. With ``reference`` (the original model): its top-1, the
    top-1 agreement and the relative output error. Always: realised MACs per image.
    """
    proto, name = _load(model)
    proto = as_native(proto)  # a portable model's layers are counted as the native ones they stand for
    dataset = data if isinstance(data, Dataset) else open_dataset(
        data, model_input(proto), image_options, limit=limit)
    ref_proto = _load(reference)[0] if reference is not None else None
    if ref_proto is not None:
        # Same interface or nothing: a mismatch would make every number meaningless.
        if model_input(ref_proto).shape[1:] != model_input(proto).shape[1:]:
            raise ZapoptError("the reference model's input shape differs from the model's; "
                              "pass the original model this one was optimized from")
        ref_out = analyze(ref_proto, input_shapes).outputs[0].shape
        out = analyze(proto, input_shapes).outputs[0].shape
        if ref_out is not None and out is not None and tuple(ref_out[1:]) != tuple(out[1:]):
            raise ZapoptError(f"the reference model's output shape {list(ref_out)} differs from the model's "
                              f"{list(out)}; pass the original model this one was optimized from")
    result = run_model(proto, dataset, batch_size=batch_size, progress=progress)
    labels = dataset.labels
    top1 = top5 = ref_top1 = agreement = rel_error = None
    logits = result.outputs.reshape(len(result.outputs), -1)
    if labels is not None:
        top1, top5 = top_k_accuracy(logits, labels, 1), top_k_accuracy(logits, labels, 5)
    if ref_proto is not None:
        ref = run_model(ref_proto, dataset, batch_size=batch_size, measure=False,
                        progress=progress, desc="reference").outputs.reshape(len(logits), -1)
        agreement = float(np.mean(np.argmax(ref, 1) == np.argmax(logits, 1)))
        denom = float(np.linalg.norm(ref))
        rel_error = float(np.linalg.norm(logits - ref) / denom) if denom > 0 else float(np.linalg.norm(logits))
        if labels is not None:
            ref_top1 = top_k_accuracy(ref, labels, 1)
    total = baseline_macs(proto, result.usage, input_shapes)
    after = total - sum(u.macs - u.macs_after for u in result.usage.values())
    data_name = str(data) if not isinstance(data, Dataset) else repr(data)
    return EvalReport(name, data_name, len(dataset), top1, top5, ref_top1, agreement, rel_error,
                      total, after, list(result.usage.values()))


def accuracy_drop(reference_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray | None) -> float:
    """Top-1 drop in percentage points (labels) or top-1 disagreement in % (no labels)."""
    if labels is not None:
        return 100.0 * (top_k_accuracy(reference_logits, labels, 1) - top_k_accuracy(logits, labels, 1))
    return 100.0 * float(np.mean(np.argmax(reference_logits, 1) != np.argmax(logits, 1)))


def accuracy_drop_standard_error(reference_logits: np.ndarray, logits: np.ndarray,
                                 labels: np.ndarray | None) -> float:
    """Standard error (points) of :func:`accuracy_drop` as an estimate of the drop on more data.

    With labels the drop is the mean of per-image differences in correctness (-1, 0, 1),
    so its error is their standard deviation over sqrt(N); without labels it is a
    binomial proportion. Images whose prediction did not change contribute no noise, so
    the error grows with the number of changed predictions, not with N alone.
    """
    n = len(logits)
    if n < 2:
        return 0.0
    if labels is not None:
        diff = (np.argmax(reference_logits, 1) == labels).astype(np.float64) - (np.argmax(logits, 1) == labels)
        return 100.0 * float(np.std(diff, ddof=1) / np.sqrt(n))
    p = float(np.mean(np.argmax(reference_logits, 1) != np.argmax(logits, 1)))
    return 100.0 * float(np.sqrt(p * (1 - p) / n))
