"""The real measurements behind :func:`zapopt.latency.select_by_latency`, in onnxruntime on
this machine: each layer alone, each native layer's cost inside the whole model (profile,
layout reorders included), and paired alternated runs of a candidate model and the
original at each batch size and thread count. One-thread runs are timed in the CPU time of
the thread that runs them (``zapopt.timing.clock_for``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from zapopt.latency import LatencySetting, LayerCost
from zapopt.timing import Timings, best_of_for, clock_for, time_alternated

#: Paired rounds per end-to-end comparison (the 95 % bound then is the 8th smallest ratio of
#: 25). 15 rounds missed a 1.025x median on OpenNSFW (bound 0.9998) on a busy machine.
MODEL_REPEATS = 25
#: Runs per profile of the in-context layer costs (batch 1).
PROFILE_RUNS = 10


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
    """The timings for :func:`zapopt.latency.select_by_latency`.

    ``original``: the input model; ``native``: the model with every candidate native;
    ``build(kept)``: the model with only ``kept`` native; ``inputs(n)``: a batch of ``n``
    calibration inputs; ``layer_threads`` and ``layer_batch``: onnxruntime threads and batch
    size for the per-layer timings and profiles.
    """

    def __init__(self, original: onnx.ModelProto, native: onnx.ModelProto, ports: Mapping[str, LayerPorts],
                 build: Callable[[frozenset[str]], onnx.ModelProto], inputs: Callable[[int], np.ndarray], *,
                 layer_threads: int | None = None, layer_batch: int = 1, repeats: int = 7,
                 model_repeats: int = MODEL_REPEATS, profile_runs: int = PROFILE_RUNS) -> None:
        from onnx.utils import Extractor

        from zapopt.runtime import feed_name, make_session

        self._make_session = make_session
        self.original, self.build, self.inputs = original, build, inputs
        self.ports, self.threads = dict(ports), layer_threads
        self.repeats, self.model_repeats, self.profile_runs = repeats, model_repeats, profile_runs
        self.sample = inputs(layer_batch)
        self.feed = feed_name(make_session(original, threads=layer_threads))
        wanted = sorted({t for p in self.ports.values() for t in (*p.inputs, p.output)})
        probe = make_session(_with_outputs(original, wanted), threads=layer_threads)
        values = probe.run(wanted, {self.feed: self.sample})
        self.tensors = dict(zip(wanted, values))
        # Shape inference stops at custom ops: declare every port's shape so each layer can be cut out.
        self._stock, self._native = (Extractor(_with_shapes(m, self.tensors)) for m in (original, native))
        self._original_profile = None
        self._models: dict[frozenset[str], onnx.ModelProto] = {}
        self._batches: dict[int, np.ndarray] = {}

    def time_layer(self, name: str) -> Timings:
        port = self.ports[name]
        feeds = {t: self.tensors[t] for t in port.inputs}
        sessions = {}
        for form, extractor in (("native", self._native), ("stock", self._stock)):
            layer = extractor.extract_model(list(port.inputs), [port.output])
            sessions[form] = self._make_session(layer, threads=self.threads)
        return time_alternated({form: (lambda s=s: s.run(None, feeds)) for form, s in sessions.items()},
                               repeats=self.repeats, balanced=True, clock=clock_for(self.threads)[1])

    def _model(self, kept: frozenset[str]) -> onnx.ModelProto:
        if kept not in self._models:
            self._models = {kept: self.build(kept)}  # one candidate at a time: they are large
        return self._models[kept]

    def layer_costs(self, kept: frozenset[str]) -> dict[str, LayerCost]:
        """Each native layer of ``build(kept)`` in the whole model's profile."""
        from zapopt.profiling import profile, reorders_next_to, replaced_stock_ms
        from zapopt.rewrite.graph_edit import is_native_node, tag_of

        feed = {self.feed: self.sample}
        if self._original_profile is None:
            self._original_profile = profile(self.original, feed, self.profile_runs, self.threads)
        model = self._model(kept)
        run = profile(model, feed, self.profile_runs, self.threads, with_graph=True)
        nodes = [n for n in model.graph.node if is_native_node(n)]
        reorders = reorders_next_to(run, [n.name for n in nodes])
        return {n.name: LayerCost(run.node_ms(n.name),
                                  replaced_stock_ms(self._original_profile, self.original,
                                                    tag_of(n, "zapopt.replaced")),
                                  reorders[n.name])
                for n in nodes}

    def time_model(self, kept: frozenset[str], setting: LatencySetting) -> Timings:
        """Paired, alternated (and order-balanced) runs of ``build(kept)`` and the original; in
        wall time (more than one thread) each pair is the best of a few interleaved runs."""
        if setting.batch not in self._batches:
            self._batches[setting.batch] = np.ascontiguousarray(self.inputs(setting.batch))
        feed = {self.feed: self._batches[setting.batch]}
        sessions = {"model": self._make_session(self._model(kept), threads=setting.threads),
                    "original": self._make_session(self.original, threads=setting.threads)}
        return time_alternated({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()},
                               repeats=self.model_repeats, balanced=True, clock=clock_for(setting.threads)[1],
                               best_of=best_of_for(setting.threads))
