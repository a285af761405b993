"""Latency-aware selection: keep a native layer only where it makes this machine faster.

Two steps, both measured on the machine ``optimize`` runs on:

1. per layer: the native node vs the stock nodes it replaces, each alone in a small model,
   on its own batch-1 input from the calibration data; a layer whose native op is not
   faster keeps its stock nodes;
2. end to end: the rewritten model vs the original (ORT_ENABLE_ALL, same process, runs
   alternated). A custom node breaks onnxruntime's NCHWc chain and may add layout
   reorders, so a model whose layers each win can still lose; while it is slower, the
   least profitable native layer goes back to stock.

The decision logic (:func:`select_by_latency`) takes the timing functions as arguments, so
it is tested with injected timings; :class:`OnnxruntimeTimer` is the real measurement.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from zapopt.errors import ZapoptError
from zapopt.timing import time_alternated

#: (native seconds, stock seconds) of one layer.
LayerTimer = Callable[[str], tuple[float, float]]
#: (rewritten model seconds, original model seconds) with these native layers kept.
ModelTimer = Callable[[frozenset[str]], tuple[float, float]]


@dataclass(frozen=True)
class LayerDecision:
    name: str
    op: str  # ZapConv or ZeroSkipConv
    native_ms: float | None
    stock_ms: float | None
    native: bool  # kept as the native op in the written model
    reason: str

    @property
    def speedup(self) -> float | None:
        if not self.native_ms or self.stock_ms is None:
            return None
        return self.stock_ms / self.native_ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "native_ms": self.native_ms, "stock_ms": self.stock_ms,
                "speedup": self.speedup, "native": self.native, "reason": self.reason}


@dataclass(frozen=True)
class ModelCheck:
    """One end-to-end comparison of the rewritten model with the original."""

    native_layers: int
    model_ms: float
    original_ms: float

    @property
    def ratio(self) -> float:
        """Original time / rewritten time (> 1: the rewritten model is faster)."""
        return self.original_ms / self.model_ms if self.model_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {"native_layers": self.native_layers, "model_ms": self.model_ms, "original_ms": self.original_ms,
                "speedup": self.ratio}


@dataclass(frozen=True)
class LatencyReport:
    """Every latency decision with the times behind it; ``measured`` is False when no
    timing ran (``--no-latency-check`` or no native library), with ``note`` saying why."""

    measured: bool
    layers: list[LayerDecision] = field(default_factory=list)
    model_checks: list[ModelCheck] = field(default_factory=list)
    note: str = ""
    threads: int | None = None

    @property
    def native_layers(self) -> list[str]:
        return [d.name for d in self.layers if d.native]

    def to_dict(self) -> dict[str, Any]:
        return {"measured": self.measured, "note": self.note, "threads": self.threads,
                "layers": [d.to_dict() for d in self.layers], "model_checks": [c.to_dict() for c in self.model_checks]}

    def format_table(self) -> str:
        from zapopt.report import format_rows

        if not self.measured:
            return f"latency: not measured ({self.note})"

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        rows = [(d.name, d.op, ms(d.native_ms), ms(d.stock_ms),
                 "-" if d.speedup is None else f"{d.speedup:.2f}x", "native" if d.native else "stock", d.reason)
                for d in self.layers]
        lines = ["latency-aware selection (batch 1, median of alternated runs on this machine):",
                 format_rows(("layer", "op", "native ms", "stock ms", "speedup", "written as", "why"), rows)]
        for check in self.model_checks:
            lines.append(f"end to end with {check.native_layers} native layers: {check.model_ms:.3f} ms vs original "
                         f"{check.original_ms:.3f} ms ({check.ratio:.2f}x)")
        return "\n".join(lines)


#: A layer must time at least this much faster native to be kept: on a shared machine single
#: medians move by several percent, and a layer "faster" by less is as likely slower
#: (OpenNSFW's selection once measured 1.006x end to end, then 0.85x in zapopt bench).
MIN_LAYER_SPEEDUP = 1.05


def select_by_latency(candidates: Mapping[str, str], time_layer: LayerTimer, time_model: ModelTimer,
                      *, threads: int | None = None) -> LatencyReport:
    """Decide which ``candidates`` (``{layer: op type}``) stay native.

    A layer stays native when its native time is at least ``MIN_LAYER_SPEEDUP`` times below
    its stock time; then, while the
    whole model with the remaining native layers is slower than the original, the layer
    saving the least time goes back to stock and the model is measured again.
    """
    timed = {name: time_layer(name) for name in candidates}
    faster = [name for name, (native, stock) in timed.items() if native * MIN_LAYER_SPEEDUP < stock]
    # least profitable first: the smallest absolute saving goes back to stock first
    order = sorted(faster, key=lambda name: timed[name][1] - timed[name][0])
    kept = list(order)
    checks: list[ModelCheck] = []
    dropped: list[str] = []
    while kept:
        model_s, original_s = time_model(frozenset(kept))
        checks.append(ModelCheck(len(kept), 1e3 * model_s, 1e3 * original_s))
        if model_s <= original_s:
            break
        dropped.append(kept.pop(0))
    decisions = []
    for name, op in candidates.items():
        native_s, stock_s = timed[name]
        if name in kept:
            reason = f"native {stock_s / native_s:.2f}x faster" if native_s > 0 else "native faster"
        elif name in dropped:
            reason = "faster alone, but the whole model was slower with it (least profitable layer dropped)"
        elif native_s < stock_s:
            reason = f"native only {stock_s / native_s:.2f}x faster, within timing noise (< {MIN_LAYER_SPEEDUP}x)"
        else:
            reason = "stock nodes as fast or faster"
        decisions.append(LayerDecision(name, op, 1e3 * native_s, 1e3 * stock_s, name in kept, reason))
    return LatencyReport(True, decisions, checks, threads=threads)


def unmeasured(candidates: Mapping[str, str], note: str) -> LatencyReport:
    """Every candidate kept native, speed not measured (the report says why)."""
    decisions = [LayerDecision(name, op, None, None, True, "not timed") for name, op in candidates.items()]
    return LatencyReport(False, decisions, [], note)


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names``."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    present = {o.name for o in work.graph.output}
    for name in names:
        if name not in present:
            work.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return work


def _with_shapes(model: onnx.ModelProto, tensors: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose value_info declares ``tensors``' float32 shapes."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    kept = [v for v in work.graph.value_info if v.name not in tensors]
    del work.graph.value_info[:]
    work.graph.value_info.extend(kept)
    declared = {v.name for v in (*work.graph.input, *work.graph.output)}
    work.graph.value_info.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(value.shape))
                                 for name, value in tensors.items() if name not in declared)
    return work


@dataclass(frozen=True)
class LayerPorts:
    """The tensors one native layer reads and writes (the same in every form of the model)."""

    inputs: tuple[str, ...]  # X, and Skip when present
    output: str


class OnnxruntimeTimer:
    """The real timings for :func:`select_by_latency`, in onnxruntime on this machine.

    ``original``: the input model; ``native``: the model with every candidate native;
    ``build(kept)``: the model with only ``kept`` native; ``sample``: one batch-1 input.
    """

    def __init__(self, original: onnx.ModelProto, native: onnx.ModelProto, ports: Mapping[str, LayerPorts],
                 build: Callable[[frozenset[str]], onnx.ModelProto], sample: np.ndarray, *,
                 threads: int | None = None, repeats: int = 7) -> None:
        from onnx.utils import Extractor

        from zapopt.runtime import feed_name, make_session

        if sample.shape[0] != 1:
            raise ZapoptError(f"latency checks run at batch 1; got a sample of shape {sample.shape}")
        self._make_session = make_session
        self.original, self.build, self.sample = original, build, sample
        self.ports, self.threads, self.repeats = dict(ports), threads, repeats
        self.feed = feed_name(make_session(original, threads=threads))
        wanted = sorted({t for p in self.ports.values() for t in (*p.inputs, p.output)})
        probe = make_session(_with_outputs(original, wanted), threads=threads)
        values = probe.run(wanted, {self.feed: sample})
        self.tensors = dict(zip(wanted, values))
        # Shape inference stops at custom ops: declare every port's shape so each layer can be cut out.
        self._stock, self._native = (Extractor(_with_shapes(m, self.tensors)) for m in (original, native))

    def time_layer(self, name: str) -> tuple[float, float]:
        port = self.ports[name]
        feeds = {t: self.tensors[t] for t in port.inputs}
        sessions = {}
        for form, extractor in (("native", self._native), ("stock", self._stock)):
            layer = extractor.extract_model(list(port.inputs), [port.output])
            sessions[form] = self._make_session(layer, threads=self.threads)
        timings = time_alternated({form: (lambda s=s: s.run(None, feeds)) for form, s in sessions.items()},
                                  repeats=self.repeats)
        return timings.median("native"), timings.median("stock")

    def time_model(self, kept: frozenset[str]) -> tuple[float, float]:
        sessions = {"model": self._make_session(self.build(kept), threads=self.threads),
                    "original": self._make_session(self.original, threads=self.threads)}
        feed = {self.feed: self.sample}
        timings = time_alternated({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()},
                                  repeats=self.repeats)
        return timings.median("model"), timings.median("original")
