"""The ``--max-drop`` search: per-layer thresholds whose measured accuracy drop on the
``--eval`` data stays within the limit, optionally budgeted by each layer's measured
effect on the output (its sensitivity probes)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx

from zapopt.curves import LayerCurve
from zapopt.data import ImageOptions, model_input, open_dataset
from zapopt.data_checks import check_drop_resolution
from zapopt.evaluate import accuracy_drop, accuracy_drop_standard_error, run_model
from zapopt.selection_modes import AccuracyBudget
from zapopt.sensitivity import SensitivityProbes, divergence_curves, layer_sensitivities, output_divergence
from zapopt.thresholds import AccuracyTargetResult, accuracy_target, choice_key

#: Held-out images each layer's sensitivity probes run on (``--max-drop`` only).
SENSITIVITY_IMAGES = 1000

#: ``build(thresholds, patterns)``: the model to measure at those per-layer choices.
ModelBuilder = Callable[[dict[str, float], dict[str, str]], onnx.ModelProto]


def accuracy_search(original: onnx.ModelProto, curves: Mapping[str, LayerCurve], build: ModelBuilder,
                    budget: AccuracyBudget, eval_source: Any, eval_images: int | None,
                    image_options: ImageOptions | None, progress: bool | None,
                    probed: SensitivityProbes | None = None,
                    ) -> tuple[AccuracyTargetResult, SensitivityProbes | None, dict[tuple, tuple[float, float]]]:
    """The --max-drop search over ``curves``; also returns the sensitivity probes (None
    without sensitivity weighting) and each measured point's plain drop and its standard
    error (the search compares the drop plus ``budget.margin`` standard errors).
    ``probed``: the probes of an earlier search, used instead of probing again once checked
    to fit these curves and images."""
    spec = model_input(original)
    dataset = open_dataset(eval_source, spec, image_options, limit=eval_images)
    check_drop_resolution(budget.max_drop, len(dataset), dataset.labels is not None)

    def outputs(thresholds: dict[str, float], patterns: dict[str, str], data: Any, desc: str) -> np.ndarray:
        model = build(thresholds, patterns) if thresholds else original
        result = run_model(model, data, measure=False, progress=progress, desc=desc).outputs
        return result.reshape(len(result), -1)

    reference = outputs({}, {}, dataset, "reference")

    plain_drops: dict[tuple, tuple[float, float]] = {}

    def measure(thresholds: dict[str, float], patterns: dict[str, str]) -> float:
        logits = outputs(thresholds, patterns, dataset, "search")
        drop = accuracy_drop(reference, logits, dataset.labels)
        error = accuracy_drop_standard_error(reference, logits, dataset.labels)
        plain_drops[choice_key(thresholds, patterns)] = (drop, error)
        return drop + budget.margin * error

    probes = None
    if budget.sensitivity:
        probe_reference = reference[: min(len(dataset), SENSITIVITY_IMAGES)]  # the first images, in order
        if probed is not None:
            probed.check(curves, probe_reference)
            probes = probed
        else:
            probe = open_dataset(eval_source, spec, image_options, limit=len(probe_reference))
            sensitivities = layer_sensitivities(
                curves,
                lambda thresholds, patterns: output_divergence(
                    probe_reference, outputs(thresholds, patterns, probe, "sensitivity")))
            probes = SensitivityProbes.measured_on(sensitivities, probe_reference)
        curves = divergence_curves(curves, probes.layers)
    return accuracy_target(curves, budget.max_drop, measure), probes, plain_drops
