"""Assemble what ``optimize`` returns: each trained layer's outcome (ZAP, or skipped and
why), the whole-model report, and the result that carries the model, curves and latency."""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from zapopt.curves import LayerCurve
from zapopt.errors import ZapoptError
from zapopt.latency import LatencyReport
from zapopt.layer_training import TrainedLayer
from zapopt.native_model import ExactReport
from zapopt.optimize_config import OptimizeConfig
from zapopt.report import LayerReport, OptimizeReport, layer_report_from_curve
from zapopt.selection_modes import AccuracyBudget


@dataclass(frozen=True)
class OptimizeResult:
    model: onnx.ModelProto
    report: OptimizeReport | ExactReport
    curves: dict[str, LayerCurve] = field(default_factory=dict)
    latency: LatencyReport | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out["curves"] = {name: curve.to_dict() for name, curve in self.curves.items()}
        if self.latency is not None:
            out["latency"] = self.latency.to_dict()
        return out

    def format_table(self) -> str:
        text = self.report.format_table()
        return text if self.latency is None else f"{text}\n\n{self.latency.format_table()}"


def _skipped(name: str, layer: TrainedLayer, why: str) -> LayerReport:
    curve = layer.curve
    return LayerReport(name, "skipped", why, int(curve.macs),
                       layer.ofm_sparsity, oracle_macs_after=float(curve.oracle_macs_after),
                       train_seconds=layer.seconds, predictor_macs=float(curve.predictor_macs),
                       train_epochs=layer.params.epochs)


def _why_exact(layer: TrainedLayer, config: OptimizeConfig) -> str:
    if float(np.max(layer.curve.savings)) <= 0:
        return "the predictor costs more than it saves at every threshold"
    if not config.selection.per_layer:
        return f"at threshold {config.uniform_threshold:g} the predictor costs more than it saves"
    return "leaving it exact fits the accuracy/error budget better"


def layer_reports(trained: Mapping[str, TrainedLayer], thresholds: Mapping[str, float],
                  stock_faster: Collection[str], config: OptimizeConfig,
                  written_exact: Collection[str] = ()) -> list[LayerReport]:
    """Each trained layer's outcome: ZAP at its threshold, or skipped with the reason
    (``written_exact``: the layers the latency check wrote as ZeroSkipConv instead)."""
    layers: list[LayerReport] = []
    for name, layer in trained.items():
        tau = thresholds[name]
        if name in written_exact:
            layers.append(_skipped(name, layer, "written exact (ZeroSkipConv: zero inputs skipped, the original "
                                                "outputs): its ZapConv did not pay (the latency table says why)"))
        elif name in stock_faster:
            layers.append(_skipped(name, layer, "the latency check kept its stock nodes (its table says why)"))
        elif tau == -math.inf:
            layers.append(_skipped(name, layer, _why_exact(layer, config)))
        else:
            layers.append(layer_report_from_curve(layer.curve, tau, ofm_sparsity=layer.ofm_sparsity,
                                                  train_seconds=layer.seconds, train_epochs=layer.params.epochs,
                                                  pattern=layer.pattern))
    return layers


def no_zap_layer_error(search: list[dict[str, Any]], config: OptimizeConfig) -> ZapoptError:
    """Why nothing was rewritten, and what to change."""
    if search and isinstance(config.selection, AccuracyBudget):
        best = min(e["drop"] for e in search)
        return ZapoptError(f"no setting kept the accuracy drop within {config.selection.max_drop}% (the smallest "
                           f"drop measured was {best:.2f}%); allow a larger --max-drop or use more --eval data")
    return ZapoptError("no layer pays for its predictor at these settings; try a higher --threshold, "
                       "a larger --max-error, or another --pattern (or --exact: no predictors, exact outputs)")
