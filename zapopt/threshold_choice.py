"""Per-layer thresholds (and patterns, with several candidates) by the config's selection
mode, on layers ``prepare_layers`` trained; ``-inf`` = leave the layer as it was."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import onnx

from zapopt.accuracy_search import accuracy_search
from zapopt.data import ImageOptions
from zapopt.errors import ZapoptError
from zapopt.layer_preparation import PreparedLayers
from zapopt.model_building import build_zap_model
from zapopt.optimize_config import OptimizeConfig
from zapopt.selection_modes import AccuracyBudget, ErrorBudget, ExactOnly
from zapopt.sensitivity import SensitivityProbes, budgets_divergence
from zapopt.thresholds import error_budget, uniform


@dataclass(frozen=True)
class ThresholdChoice:
    thresholds: dict[str, float]
    search: list[dict[str, Any]]
    measured_drop: float | None
    sensitivities: list[dict[str, Any]] = field(default_factory=list)
    #: Each rewritten layer's pattern when several were candidates (empty: the one --pattern).
    patterns: dict[str, str] = field(default_factory=dict)
    #: Standard error of ``measured_drop`` (points): how far the drop on other data may move.
    drop_standard_error: float | None = None
    #: The --max-drop search's per-layer probes (``sensitivities`` is their JSON form): pass
    #: them to another ``choose_thresholds`` on the same layers and eval data to skip probing.
    probes: SensitivityProbes | None = None


def choose_thresholds(prepared: PreparedLayers, config: OptimizeConfig, *, eval_data: Any = None,
                      image_options: ImageOptions | None = None, progress: bool | None = None,
                      probes: SensitivityProbes | None = None) -> ThresholdChoice:
    """Per-layer thresholds (and patterns, with several candidates) by the config's rule;
    ``-inf`` = leave the layer as it was.

    ``probes``: the ``probes`` of an earlier choice for the same ``prepared`` layers and
    the same ``eval_data``, e.g. for another --max-drop target: the search then reuses
    them instead of running every layer's sensitivity probes again (4 model runs per
    layer); probes from other layers or other images are refused.
    """
    mode = config.selection
    if isinstance(mode, ExactOnly):
        raise ZapoptError("--exact trains no predictors, so there are no thresholds to choose; use optimize_exact")
    # With several candidate patterns each curve point is a (pattern, threshold) option.
    curves = prepared.merged() if len(prepared.by_pattern) > 1 else prepared.curves

    def build(thresholds: dict[str, float], patterns: dict[str, str]) -> onnx.ModelProto:
        return build_zap_model(prepared.original, prepared.chosen(patterns), thresholds)

    if isinstance(mode, AccuracyBudget):
        if eval_data is None:
            raise ZapoptError("--max-drop needs held-out data to measure the drop on: add --eval DATA")
        found, measured_probes, plain = accuracy_search(prepared.original, curves, build, mode, eval_data,
                                                        config.eval_images, image_options, progress, probes)
        sensitivities = measured_probes.layers if measured_probes is not None else {}
        unit = "estimated output KL divergence (nats)" if budgets_divergence(sensitivities) else "activation mass lost"
        search = []
        for evaluation in found.evaluations:
            entry = evaluation.to_dict()
            # the budget and the summed "error" are in the units of the curves searched
            entry["budget_unit"] = unit
            # every evaluated selection was measured (a repeat reuses the first measurement)
            entry["measured_drop"], entry["drop_standard_error"] = plain[evaluation.selection.key]
            search.append(entry)
        best = found.selection
        no_fit = found.drop is None  # nothing met the limit: the original model, not measured
        chosen, chosen_error = (None, None) if no_fit else plain[best.key]
        sensitivity_rows = [s.to_dict() for s in sensitivities.values()]
        return ThresholdChoice(dict(best.thresholds), search, chosen, sensitivity_rows, dict(best.patterns),
                               chosen_error, measured_probes)
    if isinstance(mode, ErrorBudget):
        selection = error_budget(curves, mode.max_error)
        return ThresholdChoice(dict(selection.thresholds), [], None, patterns=dict(selection.patterns))
    thresholds = dict(uniform(curves, config.uniform_threshold).thresholds)
    # A layer where the predictor costs more than it saves stays as it was.
    for name, tau in thresholds.items():
        i = curves[name].index_of(tau)
        if curves[name].macs_after[i] >= curves[name].macs:
            thresholds[name] = -math.inf
    return ThresholdChoice(thresholds, [], None)
