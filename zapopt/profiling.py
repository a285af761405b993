"""onnxruntime's per-node profile, read for the two places that compare a native model with
its original node by node: ``zapopt bench``'s per-layer table and the latency check's
in-context layer costs.

onnxruntime rewrites the graph before it runs it (fusions, the NCHWc layout with its
``ReorderInput``/``ReorderOutput`` conversions), so a node's time is looked up under the
names onnxruntime gave it, and the layout reorders a native node forces are found in the
graph onnxruntime actually ran (saved next to the profile).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from zapopt.runtime import make_session

#: onnxruntime profile events of layout conversions a custom node may force around itself.
REORDER_OPS = ("ReorderInput", "ReorderOutput")


@dataclass(frozen=True)
class Profile:
    """Median kernel milliseconds per run of each node (keys ``"op\\tname"``) and, when asked
    for, the graph onnxruntime ran (after its optimizations)."""

    times: dict[str, float]
    graph: onnx.GraphProto | None = None

    def node_ms(self, name: str) -> float:
        return sum(ms for key, ms in self.times.items() if key.split("\t", 1)[1] == name)

    def reorder_ms(self) -> float:
        return sum(ms for key, ms in self.times.items() if key.split("\t", 1)[0] in REORDER_OPS)


def profile(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], runs: int, threads: int | None, *,
            with_graph: bool = False) -> Profile:
    """Run ``model`` ``runs`` times with onnxruntime's profiler on."""
    with tempfile.TemporaryDirectory(prefix="zapopt-profile-") as tmp:
        graph_path = os.path.join(tmp, "optimized.onnx") if with_graph else None
        session = make_session(model, threads=threads, profile_prefix=os.path.join(tmp, "profile"),
                               optimized_model_path=graph_path)
        for _ in range(runs):
            session.run(None, dict(feed))
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(graph_path, load_external_data=False).graph if graph_path else None
    # Per node, one duration per run: the median, not the mean, so that a run the scheduler
    # interrupted on a busy machine does not decide a layer (means swung 3x under load).
    durations: dict[str, list[float]] = defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "")
            durations[f"{op}\t{name[: -len('_kernel_time')]}"].append(event.get("dur", 0) / 1e3)
    return Profile({key: _median_per_run(values, runs) for key, values in durations.items()}, graph)


def _median_per_run(values: list[float], runs: int) -> float:
    """A node's time per run from its events: the median run, or the mean when a node was
    timed more or less often than once per run."""
    if len(values) != runs:
        return sum(values) / runs
    return float(statistics.median(values))


def replaced_stock_ms(reference: Profile, reference_model: onnx.ModelProto, replaced: str | None) -> float | None:
    """The reference profile's time of the nodes a native node replaced (its
    ``zapopt.replaced`` tag): onnxruntime names a fused node after one of its tensors, so
    names and output tensors both count."""
    if not replaced:
        return None
    wanted = set(replaced.split(","))
    for node in reference_model.graph.node:
        if node.name in wanted or (node.output and node.output[0] in wanted):
            wanted.update(o for o in node.output if o)
    total, found = 0.0, False
    for key, ms in reference.times.items():
        name = key.split("\t", 1)[1]
        base = name[: -len("_nchwc")] if name.endswith("_nchwc") else name
        if base in wanted:
            total, found = total + ms, True
    return total if found else None


def reorders_next_to(run: Profile, nodes: Collection[str]) -> dict[str, float]:
    """Milliseconds of the layout reorders adjacent to each of ``nodes`` in the graph
    onnxruntime ran: a ``ReorderInput`` fed by one of them, a ``ReorderOutput`` feeding
    them (shared evenly with its other consumers). Needs ``profile(..., with_graph=True)``."""
    if run.graph is None:
        raise ValueError("the profile was taken without its graph")
    wanted = set(nodes)
    producer = {out: node.name for node in run.graph.node for out in node.output}
    consumers: dict[str, list[str]] = defaultdict(list)
    for node in run.graph.node:
        for tensor in node.input:
            consumers[tensor].append(node.name)
    charged = dict.fromkeys(nodes, 0.0)
    for node in run.graph.node:
        if node.op_type not in REORDER_OPS:
            continue
        ms = run.node_ms(node.name)
        if node.op_type == "ReorderInput":
            source = producer.get(node.input[0])
            if source in wanted:
                charged[source] += ms
        else:
            users = consumers.get(node.output[0], [])
            for user in users:
                if user in wanted:
                    charged[user] += ms / len(users)
    return charged
