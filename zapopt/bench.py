"""``zapopt bench``: how much faster an optimized model runs than its original, here.

End to end: the original in stock onnxruntime (ORT_ENABLE_ALL) and the optimized model
(native ops registered, else its portable form), runs alternated in one process, for each
batch size and thread count; the speed-up is taken per round (paired runs) and reported as
its median and interquartile range. Per layer (onnxruntime profiling, batch 1): each native
node against the stock nodes it replaced, the share of its input that is zero, the share of
outputs it skipped (ZapConv's ``Computed``), and its GFLOP/s on the work it actually did.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from zapopt.data import ImageOptions, model_input, open_dataset
from zapopt.errors import ZapoptError
from zapopt.files import check_output_path, write_text_atomically
from zapopt.graph import load_model
from zapopt.machine import machine_info
from zapopt.model_form import as_native
from zapopt.graph.index import GraphIndex
from zapopt.rewrite.graph_edit import is_native_node, tag_of, tensor_shape
from zapopt.profiling import profile, replaced_stock_ms
from zapopt.runtime import feed_name, make_session, prepare
from zapopt.timing import WALL_TIME_BEST_OF, Spread, clock_for, time_alternated


@dataclass(frozen=True)
class EndToEnd:
    batch: int
    threads: int
    original_ms: Spread
    optimized_ms: Spread
    speedup: Spread  # original / optimized, per round
    clock: str = "wall time"

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "threads": self.threads, "clock": self.clock,
                "original_ms": self.original_ms.to_dict(),
                "optimized_ms": self.optimized_ms.to_dict(), "speedup": self.speedup.to_dict()}


@dataclass(frozen=True)
class LayerBench:
    name: str
    op: str
    macs: int  # dense conv MACs per image
    native_ms: float
    stock_ms: float | None  # None when the profile names no stock node for it
    input_zero_share: float
    output_skip_share: float  # outputs not computed (ZapConv's predicted zeros); 0 for ZeroSkipConv

    @property
    def work_gflop(self) -> float:
        """GFLOP actually needed: nonzero inputs times computed outputs (batch 1)."""
        return 2e-9 * self.macs * (1 - self.input_zero_share) * (1 - self.output_skip_share)

    @property
    def effective_gflops(self) -> float:
        return self.work_gflop / (self.native_ms * 1e-3) if self.native_ms > 0 else 0.0

    @property
    def speedup(self) -> float | None:
        return None if not self.stock_ms or self.native_ms <= 0 else self.stock_ms / self.native_ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "macs": self.macs, "native_ms": self.native_ms,
                "stock_ms": self.stock_ms, "speedup": self.speedup, "input_zero_share": self.input_zero_share,
                "output_skip_share": self.output_skip_share, "work_gflop": self.work_gflop,
                "effective_gflops": self.effective_gflops}


@dataclass(frozen=True)
class BenchReport:
    model: str
    reference: str
    data: str
    form: str  # "native" or "portable" (no library: the expansion ran)
    runs: int
    end_to_end: list[EndToEnd]
    layers: list[LayerBench] = field(default_factory=list)
    reorder_ms: float | None = None  # layout reorders in the optimized model's profile (batch 1)
    reference_reorder_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    profile_threads: int | None = None  # intra-op threads of the per-layer profile

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "reference": self.reference, "data": self.data, "form": self.form,
                "runs": self.runs, "end_to_end": [r.to_dict() for r in self.end_to_end],
                "layers": [layer.to_dict() for layer in self.layers], "reorder_ms": self.reorder_ms,
                "reference_reorder_ms": self.reference_reorder_ms, "profile_threads": self.profile_threads,
                "notes": self.notes, "machine": self.machine}

    def format_table(self) -> str:
        from zapopt.report import format_rows, pct

        lines = [f"model: {self.model} ({self.form} form)   reference: {self.reference}",
                 f"data: {self.data}   {self.runs} alternated runs per setting   machine: "
                 f"{self.machine.get('cpu')}, {self.machine.get('cores')} cores", ""]
        rows = [(r.batch, r.threads, f"{r.original_ms.median:.2f}", f"{r.optimized_ms.median:.2f}",
                 f"{r.speedup.median:.3f}x", f"{r.speedup.q1:.3f}-{r.speedup.q3:.3f}", r.clock) for r in self.end_to_end]
        lines.append(format_rows(("batch", "threads", "original ms", "optimized ms", "speed-up", "IQR", "clock"), rows))
        if self.layers:
            layer_rows = [(b.name, b.op, f"{b.native_ms:.3f}", "-" if b.stock_ms is None else f"{b.stock_ms:.3f}",
                           "-" if b.speedup is None else f"{b.speedup:.2f}x", pct(b.input_zero_share),
                           pct(b.output_skip_share), f"{b.effective_gflops:.1f}") for b in self.layers]
            lines += ["", f"per layer (batch 1, {self.profile_threads} thread(s), onnxruntime profile):",
                      format_rows(("layer", "op", "native ms", "stock ms", "speed-up", "input zeros",
                                   "outputs skipped", "GFLOP/s done"), layer_rows)]
            if self.reorder_ms is not None:
                lines.append(f"layout reorders: {self.reorder_ms:.3f} ms (original: {self.reference_reorder_ms:.3f} ms)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _parse_ints(values: Sequence[int], what: str) -> list[int]:
    out = [int(v) for v in values]
    if not out or any(v < 1 for v in out):
        raise ZapoptError(f"{what} must be positive integers, got {list(values)}")
    return list(dict.fromkeys(out))


def _layer_benches(model: onnx.ModelProto, reference: onnx.ModelProto, sample: np.ndarray, runs: int,
                   threads: int) -> tuple[list[LayerBench], float, float]:
    nodes = [n for n in model.graph.node if is_native_node(n)]
    index = GraphIndex(model.graph)
    feed = {feed_name(make_session(reference, threads=threads)): sample}
    native_profile = profile(model, feed, runs, threads)
    stock_profile = profile(reference, feed, runs, threads)
    prepared = prepare(model, expose_masks=True, native=True)
    inputs = sorted({n.input[0] for n in nodes})
    extra = [t for t in inputs if t not in {o.name for o in prepared.model.graph.output}]
    probe = onnx.ModelProto()
    probe.CopyFrom(prepared.model)
    for tensor in extra:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    fetch = [*inputs, *prepared.mask_outputs.values()]
    values = dict(zip(fetch, make_session(probe, threads=threads).run(fetch, feed)))
    layers = []
    for node in nodes:
        weight, shape = index.constant_value(node.input[1]), tensor_shape(model, node.output[0])
        if weight is None or shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise ZapoptError(f"layer {node.name!r} has no constant weights or static output shape to count MACs")
        c_out, cg, kh, kw = weight.shape
        macs = int(c_out * shape[2] * shape[3] * cg * kh * kw)
        x = values[node.input[0]]
        mask = values.get(prepared.mask_outputs.get(node.name, ""))
        layers.append(LayerBench(
            node.name, node.op_type, macs, native_profile.node_ms(node.name),
            replaced_stock_ms(stock_profile, reference, tag_of(node, "zapopt.replaced")),
            float(np.mean(x == 0)), 0.0 if mask is None else 1.0 - float(np.mean(mask))))
    return layers, native_profile.reorder_ms(), stock_profile.reorder_ms()


def bench(model: str | os.PathLike, reference: str | os.PathLike, data: Any, *, batches: Sequence[int] = (1, 8),
          threads: Sequence[int] = (1, 2), runs: int = 20, per_layer: bool = True, cpu_clock: bool = False,
          image_options: ImageOptions | None = None, json_path: str | os.PathLike | None = None) -> BenchReport:
    """Time ``model`` against ``reference`` (its original) on samples from ``data``;
    ``cpu_clock``: time the 1-thread rows in the CPU time of the thread that runs them
    (``zapopt.timing.clock_for``: steadier on a busy machine), the others in wall time."""
    batches, threads = _parse_ints(batches, "--batch"), _parse_ints(threads, "--threads")
    if runs < 3:
        raise ZapoptError(f"--runs must be at least 3 for a median and a spread, got {runs}")
    if json_path is not None:
        check_output_path(json_path, inputs=(model, reference, data), what="JSON report")
    optimized, original = as_native(load_model(model)), load_model(reference)
    spec = model_input(original)
    if model_input(optimized).shape[1:] != spec.shape[1:]:
        raise ZapoptError("the model's input shape differs from the reference's; pass the original model it was "
                          "optimized from as --reference")
    dataset = open_dataset(data, spec, image_options)
    prepared = prepare(optimized)
    notes = [] if prepared.native or prepared.model is optimized else [
        "zapopt's native op library is not available: the optimized model ran in its portable form"]
    fixed = spec.shape[0]
    rows = []
    for batch in batches:
        if fixed is not None and batch != fixed:
            notes.append(f"batch {batch} skipped: the model takes batches of exactly {fixed}")
            continue
        feed_data = dataset.batch_of(batch)
        for n_threads in threads:
            sessions = {"original": make_session(original, threads=n_threads),
                        "optimized": make_session(prepared.model, threads=n_threads)}
            feeds = {k: {feed_name(s): feed_data} for k, s in sessions.items()}
            clock_name, clock = clock_for(n_threads) if cpu_clock else ("wall time", time.perf_counter)
            best_of = 1 if clock_name == "thread CPU time" else WALL_TIME_BEST_OF
            timings = time_alternated({k: (lambda s=s, k=k: s.run(None, feeds[k])) for k, s in sessions.items()},
                                      repeats=runs, balanced=True, clock=clock, best_of=best_of)
            rows.append(EndToEnd(batch, n_threads, Spread.of([1e3 * t for t in timings.samples["original"]]),
                                 Spread.of([1e3 * t for t in timings.samples["optimized"]]),
                                 timings.ratio("original", "optimized"), clock_name))
    if not rows:
        raise ZapoptError("no batch size could run; " + "; ".join(notes))
    layers, reorder, reference_reorder, profile_threads = [], None, None, None
    if per_layer and prepared.native and any(is_native_node(n) for n in optimized.graph.node):
        if fixed is None or fixed == 1:
            # At the fewest threads: with more, a busy machine's scheduling shows up in the node
            # times (a 2-thread profile under load once made stock convs look 8x faster in the
            # model than alone).
            profile_threads = min(threads)
            layers, reorder, reference_reorder = _layer_benches(optimized, original, dataset.batch_of(1), runs,
                                                                profile_threads)
        else:
            notes.append("per-layer profile skipped: it runs at batch 1")
    report = BenchReport(str(model), str(reference), str(data), "native" if prepared.native else "portable", runs,
                         rows, layers, reorder, reference_reorder, notes, machine_info(), profile_threads)
    if json_path is not None:
        write_text_atomically(json_path, json.dumps(report.to_dict(), indent=1))
    return report
