"""``zapopt optimize``: analyze -> calibrate -> train predictors -> thresholds -> rewrite.

This module orchestrates; each step lives in its own module (see docs/layout.md):
``optimize_config`` (the options), ``layer_preparation`` + ``layer_training`` (the long
part), ``threshold_choice`` + ``accuracy_search`` (the thresholds), ``model_building``
(the rewritten model) and ``optimize_report`` (what is returned). Everything that can be
checked is checked before the long work starts: the output path, the options, the model
and the calibration data's shape and dtype. The public names of those modules are
re-exported here, where scripts and docs import them from.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from zapopt.accuracy_search import SENSITIVITY_IMAGES
from zapopt.agreement import measure_agreement, warn_about_losses
from zapopt.data import ImageOptions, model_input, open_dataset
from zapopt.errors import ZapoptError
from zapopt.files import check_distinct_outputs, check_output_path, save_model_atomically, write_text_atomically
from zapopt.layer_preparation import PreparedLayers, named_model, prepare_layers
from zapopt.layer_selection import named_subset
from zapopt.layer_training import TrainedLayer
from zapopt.model_building import build_zap_model, in_output_format, native_zap_model
from zapopt.native_model import ExactReport, choose_native_layers, native_builder, zero_skip_layers
from zapopt.notices import collect_warnings
from zapopt.optimize_config import (
    DEFAULT_NONZERO_CHANCE,
    FORMATS,
    OptimizeConfig,
    config_default,
    default_threshold,
)
from zapopt.optimize_report import OptimizeResult, layer_reports, no_zap_layer_error
from zapopt.report import OptimizeReport, plot_layer_curves
from zapopt.selection_modes import (
    AccuracyBudget,
    ErrorBudget,
    ExactOnly,
    SelectionMode,
    UniformThreshold,
    selection_from_flags,
)
from zapopt.threshold_choice import ThresholdChoice, choose_thresholds

__all__ = [
    "DEFAULT_NONZERO_CHANCE", "FORMATS", "SENSITIVITY_IMAGES", "AccuracyBudget", "ErrorBudget", "ExactOnly",
    "OptimizeConfig", "OptimizeResult", "PreparedLayers", "SelectionMode", "ThresholdChoice", "TrainedLayer",
    "UniformThreshold", "build_zap_model", "choose_thresholds", "config_default", "default_threshold", "finish",
    "optimize", "optimize_exact", "prepare_layers", "selection_from_flags",
]


def optimize(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None, calib: Any, *,
             config: OptimizeConfig = OptimizeConfig(), eval_data: Any = None,
             image_options: ImageOptions | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None,
             report_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None,
             progress: bool | None = None) -> OptimizeResult:
    """Train a ZAP per eligible layer and rewrite ``model``; write it to ``output`` if given.

    ``calib``/``eval_data``: any source ``zapopt.data.open_dataset`` accepts (image folder,
    .npy, .npz, ``embedded:...``). ``eval_data`` is required with an ``AccuracyBudget``.
    The report (JSON) goes to ``report_path`` (default: ``OUTPUT`` + ``.report.json``);
    ``plot_path`` adds a PNG of every layer's measured error/savings curve.
    """
    started = time.perf_counter()
    if not isinstance(config.selection, AccuracyBudget) and eval_data is not None:
        raise ZapoptError("--eval is only used to measure the accuracy drop for --max-drop; add --max-drop X "
                          "or leave --eval out (use `zapopt eval` to evaluate the result)")
    inputs = (model, calib, eval_data)
    if output is not None:
        check_output_path(output, inputs=inputs, what="output model")
        if report_path is None:
            report_path = f"{output}.report.json"
    if report_path is not None:
        check_output_path(report_path, inputs=inputs, what="report")
    if plot_path is not None:
        check_output_path(plot_path, inputs=inputs, what="plot")
    check_distinct_outputs(**{"output model": output, "report": report_path, "plot": plot_path})
    model_name = "<in-memory model>" if isinstance(model, onnx.ModelProto) else str(model)
    if config.exact:
        if plot_path is not None:
            raise ZapoptError("--plot draws the ZAP layers' curves; --exact has none")
        result = optimize_exact(model, calib, config=config, image_options=image_options, model_name=model_name,
                                output=None if output is None else str(output), started=started)
    else:
        with collect_warnings() as warnings:
            prepared = prepare_layers(model, calib, config=config, eval_data=eval_data,
                                      image_options=image_options, input_shapes=input_shapes, progress=progress)
            t0 = time.perf_counter()
            choice = choose_thresholds(prepared, config, eval_data=eval_data, image_options=image_options,
                                       progress=progress)
            seconds = {**prepared.seconds, "thresholds": time.perf_counter() - t0}
            result = finish(prepared, choice, config, model_name=model_name,
                            output=None if output is None else str(output), seconds=seconds, started=started,
                            sample=_calibration_sample(prepared.original, calib, image_options), progress=progress)
        result = replace(result, report=replace(result.report, warnings=list(warnings)))
    if output is not None:
        save_model_atomically(result.model, output)
    if report_path is not None:
        write_text_atomically(report_path, json.dumps(result.to_dict(), indent=1))
    if plot_path is not None:
        plot_layer_curves(result.curves, str(plot_path), chosen=choice.thresholds)
    return result


def _calibration_sample(original: onnx.ModelProto, calib: Any,
                        image_options: ImageOptions | None) -> Callable[[int], np.ndarray]:
    """``sample(n)``: the first ``n`` calibration inputs (read only when a latency check runs)."""
    return lambda size: open_dataset(calib, model_input(original), image_options, limit=size).batch_of(size)


def optimize_exact(model: str | os.PathLike | onnx.ModelProto, calib: Any, *, config: OptimizeConfig,
                   image_options: ImageOptions | None = None, model_name: str = "<in-memory model>",
                   output: str | None = None, started: float | None = None) -> OptimizeResult:
    """``optimize --exact``: no predictors; every Conv whose input can be zero becomes a
    ZeroSkipConv (outputs unchanged), kept where it is faster on this machine."""
    started = time.perf_counter() if started is None else started
    original = named_model(model)
    open_dataset(calib, model_input(original), image_options, limit=1)  # validate the data before the work
    eligible, ineligible = zero_skip_layers(original)
    chosen = named_subset(eligible, config.layers, config.exclude)
    if not chosen:
        shown = "; ".join(f"{n}: {r}" for n, r in list(ineligible.items())[:5])
        raise ZapoptError("no Conv can skip zero inputs" + (f" ({shown})" if shown else "")
                          + ("" if chosen == eligible else "; check --layers/--exclude"))
    build = native_builder(original, chosen)
    t0 = time.perf_counter()
    native = choose_native_layers(original, build, chosen, sample=_calibration_sample(original, calib, image_options),
                                  check=config.checks_latency,
                                  settings=config.latency_points)
    rewritten = in_output_format(native.model, config.output_format)
    seconds = {"latency": time.perf_counter() - t0, "total": time.perf_counter() - started}
    report = ExactReport(model_name, output, chosen, ineligible, [n for n in eligible if n not in chosen], seconds)
    return OptimizeResult(rewritten, report, {}, native.latency)


def finish(prepared: PreparedLayers, choice: ThresholdChoice, config: OptimizeConfig, *, model_name: str,
           output: str | None = None, seconds: dict[str, float] | None = None,
           started: float | None = None, sample: Callable[[int], np.ndarray] | None = None,
           progress: bool | None = None) -> OptimizeResult:
    """Rewrite the model at the chosen thresholds, measure its agreement with the original on
    the held-out calibration images (warning where it or a layer lost much), and assemble the
    report; ``sample(n)`` (``n`` calibration inputs) lets the latency check time the layers."""
    trained, thresholds = prepared.chosen(choice.patterns), choice.thresholds
    curves = {name: layer.curve for name, layer in trained.items()}
    seconds = dict(seconds or prepared.seconds)
    if not any(tau != -math.inf for tau in thresholds.values()):
        raise no_zap_layer_error(choice.search, config)
    t0 = time.perf_counter()
    native = native_zap_model(prepared.original, trained, thresholds, config, sample)
    seconds["latency"] = time.perf_counter() - t0
    written_exact = {d.name for d in native.latency.layers if d.native and d.op == "ZeroSkipConv"}
    layers = layer_reports(trained, thresholds, {d.name for d in native.latency.layers if not d.native}, config,
                           written_exact)
    agreement = None
    if prepared.held_out is not None and prepared.held_out_reference is not None:
        agreement = measure_agreement(build_zap_model(prepared.original, trained, thresholds), prepared.held_out,
                                      prepared.held_out_reference, progress)
    warn_about_losses([(l.name, l.error, l.threshold) for l in layers if l.status == "zap"],  # noqa: E741
                      agreement, isinstance(config.selection, AccuracyBudget))
    if started is not None:
        seconds["total"] = time.perf_counter() - started
    report = OptimizeReport(
        model=model_name, output=output, pattern=config.pattern,
        selection=config.selection_text, calibration_images=prepared.calibration_images,
        curve_images=next(iter(curves.values())).images, total_macs=prepared.total_macs, layers=layers,
        skipped=prepared.skipped, search=choice.search, measured_drop=choice.measured_drop,
        drop_standard_error=choice.drop_standard_error, seconds=seconds,
        predictor_input=config.predictor_input, magnitude_weight=config.magnitude_weight,
        sensitivities=choice.sensitivities, agreement=agreement)
    return OptimizeResult(in_output_format(native.model, config.output_format), report, curves, native.latency)
