"""``zapopt info`` on a model zapopt wrote: which layers are ZAP layers and what they cost.

Graph analysis alone misleads on optimized models: ZapConv (a custom-domain op) counts as
0 MACs, so the ``--format zap`` file looks 25 % cheaper than the original although it does
the same work until a kernel skips; the ``--format onnx`` expansion computes every
activation plus the predictors, so it looks dearer, and its convs no longer match the
eligibility pattern. This module finds the ZAP layers in both forms (ZapConv nodes, or the
nodes tagged ``zapopt.rule=ExpandZapToOnnx`` grouped by ``zapopt.origin``) and counts each
at its full cost, its predictor's, and the expected cost after skipping that ``optimize``
recorded in the model's metadata (or, for older files, in the report beside it).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

import zapopt.graph.info
from zapopt.graph import ModelInfo, load_model
from zapopt.graph.macs import conv_macs
from zapopt.graph.shapes import dims_of
from zapopt.report import format_rows, pct

#: Model metadata key: JSON ``{layer: {"macs": full cost, "macs_after": expected with skipping}}``.
EXPECTED_MACS_KEY = "zapopt.expected_macs"
#: The rule tag of the portable expansion's nodes (``ExpandZapToOnnx.name``).
EXPANSION_RULE = "ExpandZapToOnnx"
ORIGIN_KEY = "zapopt.origin"


@dataclass(frozen=True)
class ZapLayerCost:
    """One ZAP layer, per image. ``expected_macs_after`` includes the predictor."""

    name: str
    macs: int | None  # the conv computing every activation
    predictor_macs: int | None
    expected_macs_after: float | None  # with a kernel that skips, as measured by optimize
    threshold: float | None = None
    pattern: str | None = None


@dataclass(frozen=True)
class OptimizedModelInfo:
    """``zapopt info`` of any model: the graph analysis, plus its ZAP layers if it has any."""

    graph: ModelInfo
    form: str | None  # "zap" (ZapConv nodes), "onnx" (portable expansion) or None
    layers: list[ZapLayerCost]

    @property
    def full_macs(self) -> int:
        """MACs per image with every ZAP layer computed as a plain conv (no predictor)."""
        if self.form == "zap":  # ZapConv counted 0 in the graph analysis
            return self.graph.total_macs + sum(layer.macs or 0 for layer in self.layers)
        return self.graph.total_macs - sum(layer.predictor_macs or 0 for layer in self.layers)

    @property
    def expected_macs(self) -> float | None:
        """MACs per image once a ZapConv kernel skips the predicted zeros (None if unknown)."""
        if not self.layers or any(layer.expected_macs_after is None or layer.macs is None for layer in self.layers):
            return None
        return self.full_macs - sum(layer.macs - layer.expected_macs_after for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        out = self.graph.to_dict()
        if self.form is not None:
            out["zap"] = {"form": self.form, "full_macs": self.full_macs, "expected_macs": self.expected_macs,
                          "layers": [asdict(layer) for layer in self.layers]}
        return out

    def format_table(self) -> str:
        text = self.graph.format_table()
        if self.form is None:
            return text
        how = ("ZapConv nodes (ai.zapopt; counted above as 0 MACs)" if self.form == "zap" else
               "the portable expansion (standard ONNX ops that compute every activation and mask it; "
               "counted above with their predictors, and their convs no longer look eligible)")
        rows = [(layer.name, "-" if layer.macs is None else f"{layer.macs:,}",
                 "-" if layer.predictor_macs is None else f"{layer.predictor_macs:,}",
                 "-" if layer.expected_macs_after is None else f"{layer.expected_macs_after:,.0f}",
                 "-" if layer.threshold is None else f"{layer.threshold:g}", layer.pattern or "-")
                for layer in self.layers]
        lines = ["", f"ZAP layers: {len(self.layers)}, as {how}",
                 format_rows(("layer", "MACs (full)", "predictor", "expected after", "threshold", "pattern"), rows),
                 f"whole model computing every activation (no predictors): {self.full_macs:,} MACs per image"]
        expected = self.expected_macs
        if expected is not None:
            saved = 1 - expected / self.full_macs if self.full_macs else 0.0
            lines.append(f"expected with a ZapConv kernel that skips: {expected:,.0f} MACs per image "
                         f"({pct(saved)} fewer; measured by optimize on its held-out calibration images)")
        else:
            lines.append("expected cost after skipping: not recorded in this model (see its optimize report)")
        if self.form == "onnx":
            lines.append("this portable file runs on stock onnxruntime but skips nothing; "
                         "use the --format zap model to measure savings with `zapopt eval`")
        return text + "\n" + "\n".join(lines)


def _expected(model: onnx.ModelProto) -> dict[str, dict[str, float]]:
    for entry in model.metadata_props:
        if entry.key == EXPECTED_MACS_KEY:
            try:
                value = json.loads(entry.value)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def _expected_from_report(path: Path) -> dict[str, dict[str, float]]:
    """The same numbers from the OUTPUT.report.json optimize wrote beside the model, for
    models written before the metadata existed (or with it stripped)."""
    try:
        report = json.loads(path.read_text())
        return {layer["name"]: {"macs": layer["macs"], "macs_after": layer["macs_after"]}
                for layer in report.get("layers", []) if layer.get("status") == "zap"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _zapconv_layers(model: onnx.ModelProto, expected: Mapping[str, Any]) -> list[ZapLayerCost]:
    from zapopt.rewrite.zap_layers import read_zap_layers
    from zapopt.ops.spec import PREDICTOR_MACS_PER_ACTIVATION

    declared = {v.name: dims_of(v.type) for v in (*model.graph.value_info, *model.graph.output)}
    layers = []
    for layer in read_zap_layers(model):
        shape = declared.get(layer.output)
        macs = predictor = None
        if layer.weight_shape is not None and shape and all(isinstance(d, int) for d in shape[1:]):
            per_image = [1, *shape[1:]]
            macs = conv_macs(per_image, layer.weight_shape)
            predictor = 0 if layer.threshold == -math.inf else PREDICTOR_MACS_PER_ACTIVATION * math.prod(shape[1:])
        recorded = expected.get(layer.name, {})
        layers.append(ZapLayerCost(layer.name, macs if macs is not None else recorded.get("macs"), predictor,
                                   recorded.get("macs_after"), layer.threshold, layer.pattern.name))
    return layers


def _expanded_layers(model: onnx.ModelProto, graph: ModelInfo, expected: Mapping[str, Any]) -> list[ZapLayerCost]:
    from zapopt.graph import unique_node_names
    from zapopt.rewrite.graph_edit import rule_of, tag_of

    macs_by_node = {layer.name: layer.macs for layer in graph.layers}
    groups: dict[str, list[int]] = {}
    for node, name in zip(model.graph.node, unique_node_names(model.graph)):
        origin = tag_of(node, ORIGIN_KEY)
        if rule_of(node) == EXPANSION_RULE and origin is not None and node.op_type == "Conv":
            groups.setdefault(origin, []).append(macs_by_node.get(name, 0))
    layers = []
    for origin, convs in groups.items():  # the layer's conv comes first, then the two predictor convs
        recorded = expected.get(origin, {})
        layers.append(ZapLayerCost(origin, convs[0], sum(convs[1:]), recorded.get("macs_after")))
    return layers


def describe(model: str | os.PathLike, input_shapes: Mapping[str, Sequence[int]] | None = None
             ) -> OptimizedModelInfo:
    """The graph analysis of ``model`` and, for a model ``zapopt optimize`` wrote, its ZAP layers."""
    graph = zapopt.graph.info.info(model, input_shapes)  # the public `zapopt.info` analysis
    proto = load_model(model, load_external_data=False, check=False)
    expected = _expected(proto) or _expected_from_report(Path(f"{model}.report.json"))
    zap = _zapconv_layers(proto, expected)
    if zap:
        return OptimizedModelInfo(graph, "zap", zap)
    expanded = _expanded_layers(proto, graph, expected)
    if expanded:
        return OptimizedModelInfo(graph, "onnx", expanded)
    return OptimizedModelInfo(graph, None, [])
