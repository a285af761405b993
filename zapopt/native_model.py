"""Assemble the native model ``optimize`` writes: ZAP layers (ZapConv), zero-skip layers
(ZeroSkipConv) on every other Conv whose input can be zero, and the latency-aware choice of
which of them stay native on this machine.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from zapopt.latency import LatencyReport, LatencySetting, latency_settings, select_by_latency, unmeasured
from zapopt.latency_timer import LayerPorts, OnnxruntimeTimer
from zapopt.ops.spec import is_zero_skip_node
from zapopt.rewrite.graph_edit import is_native_node
from zapopt.rewrite.zero_skip import ReplaceWithZeroSkip, zero_skip_candidates

#: Builds the model with only ``kept`` native layers.
Builder = Callable[[frozenset[str]], onnx.ModelProto]

NO_LIBRARY_NOTE = ("zapopt's native op library is not available here, so no layer could be timed; every "
                   "candidate was written native and the speed is unmeasured")
NOT_CHECKED_NOTE = "--no-latency-check: every candidate was written native; the speed is unmeasured"


def zero_skip_layers(model: onnx.ModelProto, exclude: Collection[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The Convs of ``model`` that can become ZeroSkipConv (minus ``exclude``), and why the
    others cannot."""
    candidates = zero_skip_candidates(model)
    eligible = [name for name, why in candidates.items() if why is None and name not in exclude]
    reasons = {name: why for name, why in candidates.items() if why is not None}
    return eligible, reasons


def native_builder(original: onnx.ModelProto, zero_skip: list[str],
                   zap_build: Builder | None = None) -> Builder:
    """``build(kept)``: ``zap_build(kept)`` (or the original) with the ``zero_skip`` layers in
    ``kept`` rewritten into ZeroSkipConv."""

    def build(kept: frozenset[str]) -> onnx.ModelProto:
        base = original if zap_build is None else zap_build(kept)
        chosen = [name for name in zero_skip if name in kept]
        return ReplaceWithZeroSkip(chosen)(base).model if chosen else base

    return build


def layer_ports(model: onnx.ModelProto) -> dict[str, LayerPorts]:
    """What each native node reads (X, Skip) and writes, by node name."""
    ports = {}
    for node in model.graph.node:
        if not is_native_node(node):
            continue
        skip_slot = 3 if is_zero_skip_node(node) else 7
        skip = node.input[skip_slot] if len(node.input) > skip_slot and node.input[skip_slot] else None
        ports[node.name] = LayerPorts((node.input[0], *([skip] if skip else [])), node.output[0])
    return ports


def native_ops(model: onnx.ModelProto) -> dict[str, str]:
    return {node.name: node.op_type for node in model.graph.node if is_native_node(node)}


@dataclass(frozen=True)
class NativeResult:
    model: onnx.ModelProto
    latency: LatencyReport


def choose_native_layers(original: onnx.ModelProto, build: Builder, candidates: Collection[str], *,
                         sample: Callable[[int], np.ndarray] | None, check: bool,
                         settings: Sequence[LatencySetting] = latency_settings()) -> NativeResult:
    """Build the model with every candidate native, then (``check``) keep only the layers
    that make this machine faster at every batch size and thread count of ``settings``;
    ``sample(n)`` gives a batch of ``n`` calibration inputs."""
    from zapopt.data import model_input
    from zapopt.runtime import native_library

    everything = build(frozenset(candidates))
    ops = native_ops(everything)
    if not ops:
        return NativeResult(everything, LatencyReport(False, note="no layer became native"))
    if not check:
        return NativeResult(everything, unmeasured(ops, NOT_CHECKED_NOTE))
    if native_library() is None:
        return NativeResult(everything, unmeasured(ops, NO_LIBRARY_NOTE))
    if sample is None:
        return NativeResult(everything, unmeasured(ops, "no calibration sample was given to time the layers with"))
    fixed = model_input(original).shape[0]
    runnable = [s for s in settings if fixed is None or s.batch == fixed]
    note = "" if len(runnable) == len(settings) else \
        f"the model takes batches of exactly {fixed}: other latency batch sizes were not checked"
    if not runnable:
        runnable = sorted({LatencySetting(fixed, s.threads) for s in settings}, key=lambda s: s.threads or 0)
    counts = [s.threads for s in runnable]
    # the layers are screened at the fewest threads asked for: one thread is timed in CPU time, the least noisy
    layer_threads = None if None in counts else min(counts)  # type: ignore[type-var]
    timer = OnnxruntimeTimer(original, everything, layer_ports(everything), build, sample,
                             layer_threads=layer_threads, layer_batch=fixed or 1)
    report = select_by_latency(ops, timer.time_layer, timer.time_model, settings=runnable,
                               layer_costs=timer.layer_costs, note=note)
    return NativeResult(build(frozenset(report.native_layers)), report)


@dataclass(frozen=True)
class ExactReport:
    """What ``optimize --exact`` did: which Convs skip zero inputs, and why the others do not."""

    model: str
    output: str | None
    zero_skip: list[str]
    ineligible: dict[str, str]
    excluded: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "output": self.output, "mode": "exact", "zero_skip_candidates": self.zero_skip,
                "ineligible": [{"name": n, "reason": r} for n, r in self.ineligible.items()],
                "excluded": self.excluded, "seconds": self.seconds}

    def format_table(self) -> str:
        from zapopt.report import format_rows

        rows = [(name, "zero-skip candidate", "") for name in self.zero_skip]
        rows += [(name, "excluded", "--exclude/--layers") for name in self.excluded]
        rows += [(name, "stays stock", why) for name, why in self.ineligible.items()]
        head = f"model: {self.model}" + (f"  ->  {self.output}" if self.output else "")
        return "\n".join([head, "mode: exact (every output computed; only multiply-adds with a zero input skipped)",
                          "", format_rows(("conv", "status", "why"), rows)])
