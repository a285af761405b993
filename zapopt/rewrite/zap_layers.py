"""Inspect and retune the ZapConv nodes of a rewritten model.

``zapopt retune`` changes only thresholds: the predictor weights and patterns stay, so a
new operating point costs no retraining and no re-analysis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
from onnx import helper

from zapopt.errors import ZapoptError
from zapopt.ops.patterns import Pattern
from zapopt.ops.spec import ZapConvAttrs, is_zap_node
from zapopt.rewrite.base import Pass, PassResult
from zapopt.graph.index import GraphIndex
from zapopt.rewrite.graph_edit import rule_of


@dataclass(frozen=True)
class ZapLayer:
    """What a ZapConv node does, read back from the model."""

    name: str
    input: str
    output: str
    skip: str | None
    computed_output: str | None
    weight_shape: tuple[int, ...] | None
    attrs: ZapConvAttrs
    rule: str | None

    @property
    def threshold(self) -> float:
        return self.attrs.threshold

    @property
    def pattern(self) -> Pattern:
        return self.attrs.pattern


def read_zap_layers(model: onnx.ModelProto) -> list[ZapLayer]:
    """Every ZapConv node of the main graph, in graph order."""
    index = GraphIndex(model.graph)
    layers = []
    for node in model.graph.node:
        if not is_zap_node(node):
            continue
        weight = index.constant_value(node.input[1]) if len(node.input) > 1 else None
        layers.append(
            ZapLayer(
                name=node.name,
                input=node.input[0],
                output=node.output[0],
                skip=node.input[7] if len(node.input) > 7 and node.input[7] else None,
                computed_output=node.output[1] if len(node.output) > 1 and node.output[1] else None,
                weight_shape=None if weight is None else tuple(weight.shape),
                attrs=ZapConvAttrs.from_node(node),
                rule=rule_of(node),
            )
        )
    return layers


class SetThresholds(Pass):
    """Set the ``threshold`` of ZapConv nodes by node name (``-inf`` = compute everything)."""

    name = "SetThresholds"
    requires = "the model contains ZapConv nodes with the given names"

    def __init__(self, thresholds: Mapping[str, float]) -> None:
        checked = {}
        for layer, value in thresholds.items():
            value = float(value)
            if math.isnan(value):
                raise ZapoptError(f"threshold for {layer!r} is NaN; use a number, -inf or inf")
            checked[layer] = value
        self.thresholds = checked

    def run(self, model: onnx.ModelProto) -> PassResult:
        zap_nodes = {n.name: n for n in model.graph.node if is_zap_node(n)}
        unknown = sorted(set(self.thresholds) - set(zap_nodes))
        if unknown:
            raise ZapoptError(
                f"no ZapConv layer named {', '.join(map(repr, unknown))}; "
                f"the model has: {', '.join(sorted(zap_nodes)) or 'none'}"
            )
        modified = False
        for layer, value in self.thresholds.items():
            node = zap_nodes[layer]
            for attr in node.attribute:
                if attr.name == "threshold":
                    modified = modified or bool(np.float32(attr.f) != np.float32(value))
                    attr.CopyFrom(helper.make_attribute("threshold", value))
                    break
            else:
                node.attribute.append(helper.make_attribute("threshold", value))
                modified = True
        return PassResult(model, modified)
