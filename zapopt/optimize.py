"""``zapopt optimize``: analyze -> calibrate -> train predictors -> thresholds -> rewrite.

Everything that can be checked is checked before the long work starts: the output path,
the options, the model and the calibration data's shape and dtype.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from zapopt.agreement import kept_reference, measure_agreement, warn_about_losses
from zapopt.calibrate import calibrate
from zapopt.curves import LayerCurve, default_taus, layer_curve
from zapopt.data import Dataset, ImageOptions, model_input, open_dataset
from zapopt.data_checks import (MIN_CALIBRATION_IMAGES, check_calibration_count, check_drop_resolution,
                                check_free_space, training_images)
from zapopt.errors import ZapoptError
from zapopt.evaluate import accuracy_drop, accuracy_drop_standard_error, run_model
from zapopt.files import check_distinct_outputs, check_output_path, save_model_atomically, write_text_atomically
from zapopt.graph import ConvActivation, analyze, load_model, with_unique_node_names
from zapopt.graph.opset import MIN_REWRITE_OPSET
from zapopt.latency import DEFAULT_BATCHES, LatencyReport, latency_settings
from zapopt.layer_selection import named_subset, select_layers
from zapopt.notices import collect_warnings
from zapopt.native_model import (
    ExactReport,
    NativeResult,
    choose_native_layers,
    native_builder,
    native_ops,
    zero_skip_layers,
)
from zapopt.zap_info import EXPECTED_MACS_KEY
from zapopt.ops.patterns import get_pattern
from zapopt.pattern_choice import merge_curves, parse_patterns
from zapopt.predictor.inputs import PredictorInput
from zapopt.progress import progress_bar
from zapopt.report import LayerReport, OptimizeReport, layer_report_from_curve, plot_layer_curves
from zapopt.rewrite.expand import ExpandZapToOnnx
from zapopt.rewrite.replace import ReplaceWithZap, ZapParams
from zapopt.sensitivity import (
    SensitivityProbes,
    budgets_divergence,
    divergence_curves,
    layer_sensitivities,
    output_divergence,
)
from zapopt.thresholds import AccuracyTargetResult, accuracy_target, choice_key, error_budget, uniform

#: native: ZapConv + ZeroSkipConv nodes (zapopt's op library); zap: ZapConv nodes only;
#: onnx: the portable expansion (standard ops, no speed-up).
FORMATS = ("native", "zap", "onnx")
#: Without --threshold/--max-error/--max-drop, a position this likely to be nonzero sits at
#: the threshold (see :func:`default_threshold`).
DEFAULT_NONZERO_CHANCE = 0.1
#: Held-out images each layer's sensitivity probes run on (``--max-drop`` only).
SENSITIVITY_IMAGES = 1000


def default_threshold(magnitude_weight: float) -> float:
    """The uniform threshold used when none is given: the score an MSE-trained predictor
    gives a position that is nonzero with probability p = ``DEFAULT_NONZERO_CHANCE``.

    With the paper's plain MSE that score is p itself (0.1, the paper's working point).
    Weighting positives by 1 + w y / mean(y > 0) (mean 1 + w) moves the optimum to
    p (1 + w) / (1 + p w), e.g. 0.4375 for w = 6, so the default keeps its meaning.
    """
    p = DEFAULT_NONZERO_CHANCE
    return p * (1 + magnitude_weight) / (1 + p * magnitude_weight)


@dataclass(frozen=True)
class OptimizeConfig:
    """Every knob of ``zapopt optimize`` (validated on construction)."""

    pattern: str = "checkerboard"  # a name, a comma-separated list or "auto": chosen per layer
    threshold: float | None = None  # uniform threshold
    max_error: float | None = None  # per-layer thresholds under a summed error budget
    max_drop: float | None = None  # per-layer thresholds under a measured accuracy drop (%)
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_first: bool = False
    calib_images: int = 1024
    holdout: float = 0.25  # share of calibration images kept out of training, for the curves
    eval_images: int | None = None
    epochs: int = 3  # on the largest layer; smaller maps get more, see max_epoch_scale
    max_epoch_scale: int = 8  # 1 = every layer trains for ``epochs``
    lr: float = 1e-2
    batch_size: int = 32  # images per onnxruntime batch (calibration)
    train_batch_size: int = 8  # images per predictor training step
    seed: int = 0
    output_format: str = "native"
    predictor_input: str = "preactivation"  # "activation" = the paper's predictor input
    magnitude_weight: float = 6.0  # 0 = the paper's plain MSE loss
    sensitivity_weighting: bool = True  # --max-drop: budget each layer's measured effect on the output
    drop_margin: float = 0.0  # --max-drop: standard errors added to the measured drop before comparing
    exact: bool = False  # no predictors: every eligible conv becomes ZeroSkipConv (outputs unchanged)
    latency_check: bool = True  # keep a native layer only where it is faster on this machine
    # the end-to-end latency check must hold at every batch size x thread count (threads None: onnxruntime's default)
    latency_batch: int | tuple[int, ...] = DEFAULT_BATCHES
    latency_threads: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        patterns = parse_patterns(self.pattern)
        for name in ("exact", "latency_check"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        latency_settings(self.latency_batch, self.latency_threads)  # validates them
        if self.exact:
            given = [flag for flag, value in (("--threshold", self.threshold), ("--max-error", self.max_error),
                                              ("--max-drop", self.max_drop)) if value is not None]
            if given or self.pattern != "checkerboard":
                raise ZapoptError(f"--exact trains no predictors, so it takes no {', '.join(given) or '--pattern'}; "
                                  "drop it, or leave out --exact for ZAP")
            if self.output_format == "zap":
                raise ZapoptError("--exact writes ZeroSkipConv nodes, not ZapConv: use --format native (the default) "
                                  "or --format onnx")
        chosen = [n for n in ("threshold", "max_error", "max_drop") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ZapoptError("give only one of --threshold, --max-error and --max-drop")
        if len(patterns) > 1 and self.max_error is None and self.max_drop is None:
            raise ZapoptError(f"choosing the pattern per layer ({self.pattern!r}) needs a per-layer budget: add "
                              "--max-error E or --max-drop X --eval DATA, or give a single --pattern")
        for name in ("threshold", "max_error", "max_drop", "lr", "holdout", "magnitude_weight", "drop_margin"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if value is not None and math.isnan(value):
                raise ZapoptError(f"{name} must be a number, got NaN")
        if self.max_error is not None and not (0 <= self.max_error < math.inf):
            raise ZapoptError(f"--max-error must be a finite number >= 0, got {self.max_error}")
        if self.max_drop is not None and not (0 <= self.max_drop <= 100):
            raise ZapoptError(f"--max-drop is in percent and must be in [0, 100], got {self.max_drop}")
        if not isinstance(self.sensitivity_weighting, bool):
            raise TypeError(f"sensitivity_weighting must be True or False, got {self.sensitivity_weighting!r}")
        if not 0 <= self.drop_margin < math.inf:
            raise ZapoptError(f"--drop-margin must be a finite number >= 0 (standard errors), got {self.drop_margin}")
        if self.drop_margin > 0 and self.max_drop is None:
            raise ZapoptError("--drop-margin only applies to the --max-drop search; add --max-drop X --eval DATA")
        if not 0 <= self.magnitude_weight < math.inf:
            raise ZapoptError(f"--magnitude-weight must be a finite number >= 0, got {self.magnitude_weight}")
        if not 0 < self.holdout < 1:
            raise ZapoptError(f"holdout must be in (0, 1), got {self.holdout}")
        for name in ("calib_images", "epochs", "max_epoch_scale", "batch_size", "train_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ZapoptError(f"{name} must be a positive integer, got {value!r}")
        if self.calib_images < MIN_CALIBRATION_IMAGES:
            raise ZapoptError(f"use at least {MIN_CALIBRATION_IMAGES} calibration images (more is better: 256-1024)")
        PredictorInput(self.predictor_input)  # validates the name
        if self.output_format not in FORMATS:
            raise ZapoptError(f"unknown format {self.output_format!r}; choose one of {', '.join(FORMATS)}")

    @property
    def patterns(self) -> tuple[str, ...]:
        """The candidate patterns (one, or several to choose from per layer)."""
        return parse_patterns(self.pattern)

    @property
    def selection_text(self) -> str:
        if self.exact:
            return "exact (no predictors)"
        if self.max_drop is not None:
            return f"max accuracy drop {self.max_drop}%"
        if self.max_error is not None:
            return f"error budget {self.max_error}"
        return f"uniform {self.uniform_threshold}"

    @property
    def uniform_threshold(self) -> float:
        return default_threshold(self.magnitude_weight) if self.threshold is None else float(self.threshold)


@dataclass(frozen=True)
class TrainedLayer:
    """A layer's trained predictor and its measured curve."""

    conv: ConvActivation
    params: Any  # TrainedPredictor
    curve: LayerCurve
    ofm_sparsity: float
    seconds: float
    pattern: str


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


def build_zap_model(original: onnx.ModelProto, trained: Mapping[str, TrainedLayer],
                    thresholds: Mapping[str, float]) -> onnx.ModelProto:
    """The original model with every layer that has a finite threshold replaced by ZapConv
    (with that layer's trained predictor and pattern)."""
    params = {}
    for name, tau in thresholds.items():
        if tau == -math.inf:
            continue  # computing everything: the original layer is cheaper
        layer = trained[name]
        params[name] = ZapParams(layer.params.folded, get_pattern(layer.pattern), float(tau),
                                 layer.params.predictor_input.kind)
    result = ReplaceWithZap(params)(original).model  # a pass works on its own copy
    meta = {p.key: p for p in result.metadata_props}
    used = ",".join(dict.fromkeys(trained[name].pattern for name in params))
    expected = {}  # what `zapopt info` shows: each layer's cost without and with skipping, per image
    for name in params:
        curve = trained[name].curve
        i = curve.index_of(thresholds[name])
        if i is not None:
            expected[name] = {"macs": int(curve.macs), "macs_after": float(curve.macs_after[i])}
    for key, value in (("zapopt.pattern", used), ("zapopt.layers", str(len(params))),
                       (EXPECTED_MACS_KEY, json.dumps(expected))):
        entry = meta.get(key) or result.metadata_props.add()
        entry.key, entry.value = key, value
    return result


def _ofm_sparsity(stored: np.ndarray, source: PredictorInput, batch: int = 64) -> float:
    zeros = total = 0
    for start in range(0, stored.shape[0], batch):
        chunk = source.ofm(stored[start:start + batch])
        zeros += int(chunk.size - np.count_nonzero(chunk))
        total += chunk.size
    return zeros / total if total else 0.0


def _train_layers(store: Any, selected: Sequence[ConvActivation], config: OptimizeConfig,
                  taus: np.ndarray, progress: bool | None) -> dict[str, dict[str, TrainedLayer]]:
    """``{pattern: {layer: TrainedLayer}}`` for every candidate pattern."""
    import torch

    from zapopt.predictor.train import scaled_epochs, train_predictor

    activations = {conv.conv: int(np.prod(store.layer_array(conv.conv).shape[1:])) for conv in selected}
    largest = max(activations.values())
    n = store.num_images
    n_train = training_images(n, config.holdout)
    trained: dict[str, dict[str, TrainedLayer]] = {name: {} for name in config.patterns}
    jobs = [(name, conv) for name in config.patterns for conv in selected]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible training needs a fixed thread count; tiny convs gain nothing
    bar = progress_bar(len(jobs), "predictors", "layer", progress)
    try:
        for pattern_name, conv in jobs:
            pattern = get_pattern(pattern_name)
            stored = store.layer_array(conv.conv)  # the ofm, or the pre-activation
            source = PredictorInput(config.predictor_input, conv.clip_max)
            started = time.perf_counter()
            epochs = scaled_epochs(config.epochs, activations[conv.conv], largest, config.max_epoch_scale)
            predictor = train_predictor(stored, pattern, epochs=epochs, lr=config.lr,
                                        batch_size=config.train_batch_size, seed=config.seed,
                                        max_images=n_train, progress=False, predictor_input=source,
                                        magnitude_weight=config.magnitude_weight)
            curve = layer_curve(conv.conv, stored[n_train:], predictor, macs=conv.macs, taus=taus)
            trained[pattern_name][conv.conv] = TrainedLayer(conv, predictor, curve, _ofm_sparsity(stored, source),
                                                            time.perf_counter() - started, pattern_name)
            bar.update(1)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    return trained


def _calibration_bytes(selected: Sequence[ConvActivation], images: int) -> int:
    """Disk the calibration store needs: one float32 activation per layer and image."""
    per_image = sum(int(np.prod(conv.output_shape[1:])) for conv in selected if conv.output_shape)
    return 4 * per_image * images


def _calibration_tensors(selected: Sequence[ConvActivation], config: OptimizeConfig) -> dict[str, str]:
    """Each layer's tensor to record: the one its predictor reads (the ofm is derived)."""
    tensors = {}
    for conv in selected:
        tensor = conv.preactivation if config.predictor_input == "preactivation" else conv.output
        if not tensor:
            raise ZapoptError(f"layer {conv.conv!r} has no activation to calibrate ({conv.reason or 'not eligible'})")
        tensors[conv.conv] = tensor
    return tensors


def _curve_grid(config: OptimizeConfig) -> np.ndarray:
    """The thresholds each curve is measured at (the op compares in float32, so must they)."""
    grid = default_taus()
    if config.max_error is None and config.max_drop is None:
        tau = config.uniform_threshold
        grid = grid[np.float32(grid) != np.float32(tau)]  # a float32 twin of tau would be ambiguous
        grid = np.unique(np.concatenate([grid, [tau]]))
    return grid


def _accuracy_search(original: onnx.ModelProto, curves: Mapping[str, LayerCurve],
                     build: Callable[[dict[str, float], dict[str, str]], onnx.ModelProto], config: OptimizeConfig,
                     eval_source: Any, image_options: ImageOptions | None, progress: bool | None,
                     probed: SensitivityProbes | None = None,
                     ) -> tuple[AccuracyTargetResult, SensitivityProbes | None, dict[tuple, tuple[float, float]]]:
    """The --max-drop search over ``curves`` (``build(thresholds, patterns)`` makes the model to
    measure); also returns the sensitivity probes (None without sensitivity weighting) and
    each measured point's plain drop and its standard error (the search compares the drop
    plus ``config.drop_margin`` standard errors). ``probed``: the probes of an earlier
    search, used instead of probing again once checked to fit these curves and images."""
    spec = model_input(original)
    dataset = open_dataset(eval_source, spec, image_options, limit=config.eval_images)
    check_drop_resolution(config.max_drop, len(dataset), dataset.labels is not None)

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
        return drop + config.drop_margin * error

    probes = None
    if config.sensitivity_weighting:
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
    return accuracy_target(curves, config.max_drop, measure), probes, plain_drops


@dataclass(frozen=True)
class PreparedLayers:
    """The result of the long part of ``optimize``: predictors and curves for every layer.

    Choosing thresholds and rewriting are cheap afterwards, so several operating points
    (e.g. several --max-drop targets) can share one ``prepare_layers`` call.
    """

    original: onnx.ModelProto
    total_macs: int
    by_pattern: dict[str, dict[str, TrainedLayer]]  # {pattern: {layer: ...}}, one entry per candidate
    skipped: list[tuple[str, str]]
    calibration_images: int
    seconds: dict[str, float]
    #: The held-out calibration images and the original's first output on them (flattened per
    #: image), to measure the rewritten model's agreement; None when too large to keep.
    held_out: Dataset | None = None
    held_out_reference: np.ndarray | None = None

    @property
    def trained(self) -> dict[str, TrainedLayer]:
        """The first candidate pattern's layers (the only ones with a single --pattern)."""
        return next(iter(self.by_pattern.values()))

    @property
    def curves(self) -> dict[str, LayerCurve]:
        return {name: t.curve for name, t in self.trained.items()}

    def merged(self) -> dict[str, LayerCurve]:
        """Every candidate's curves merged per layer (see ``zapopt.pattern_choice``)."""
        return merge_curves({p: {n: t.curve for n, t in layers.items()} for p, layers in self.by_pattern.items()})

    def chosen(self, patterns: Mapping[str, str | None]) -> dict[str, TrainedLayer]:
        """Each layer's trained predictor for its chosen pattern (the first candidate where
        none was chosen, i.e. for layers left as they were)."""
        return {name: self.by_pattern[patterns.get(name) or next(iter(self.by_pattern))][name]
                for name in self.trained}


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


def _named(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """The model with every node named as ``zapopt.graph`` reports it, so that layer names
    stay valid while layers are rewritten one after another."""
    return with_unique_node_names(load_model(model, min_opset=MIN_REWRITE_OPSET))  # old opsets: converted, checked


def prepare_layers(model: str | os.PathLike | onnx.ModelProto, calib: Any, *,
                   config: OptimizeConfig = OptimizeConfig(), eval_data: Any = None,
                   image_options: ImageOptions | None = None,
                   input_shapes: Mapping[str, Sequence[int]] | None = None,
                   progress: bool | None = None) -> PreparedLayers:
    """Analyze, calibrate and train one predictor per selected layer (the long part)."""
    if not isinstance(config, OptimizeConfig):
        raise TypeError("config must be an OptimizeConfig")
    if config.max_drop is not None and eval_data is None:
        raise ZapoptError("--max-drop needs held-out data to measure the drop on: add --eval DATA")
    original = _named(model)
    info = analyze(original, input_shapes)
    selected, skipped = select_layers(info.convs, config.layers, config.exclude, config.include_first)
    spec = model_input(original)
    calib_set = open_dataset(calib, spec, image_options, limit=config.calib_images)
    check_calibration_count(len(calib_set), config.holdout, calib_set.description)
    if eval_data is not None:  # validate now, run later
        open_dataset(eval_data, spec, image_options, limit=config.eval_images)
    check_free_space(_calibration_bytes(selected, len(calib_set)), len(calib_set))
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with calibrate(original, _calibration_tensors(selected, config), calib_set.batches(config.batch_size),
                   total_images=len(calib_set), progress=progress) as store:
        seconds["calibrate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        by_pattern = _train_layers(store, selected, config, _curve_grid(config), progress)
        seconds["train"] = time.perf_counter() - t0
        n_images = store.num_images
        n_train = training_images(n_images, config.holdout)
        reference = kept_reference(store.logits[n_train:])
    held_out = calib_set.window(n_train, n_images - n_train)
    return PreparedLayers(original, info.total_macs, by_pattern, skipped, n_images, seconds, held_out, reference)


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
    # With several candidate patterns each curve point is a (pattern, threshold) option.
    curves = prepared.merged() if len(prepared.by_pattern) > 1 else prepared.curves

    def build(thresholds: dict[str, float], patterns: dict[str, str]) -> onnx.ModelProto:
        return build_zap_model(prepared.original, prepared.chosen(patterns), thresholds)

    if config.max_drop is not None:
        if eval_data is None:
            raise ZapoptError("--max-drop needs held-out data to measure the drop on: add --eval DATA")
        found, measured_probes, plain = _accuracy_search(prepared.original, curves, build, config, eval_data,
                                                         image_options, progress, probes)
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
    if config.max_error is not None:
        selection = error_budget(curves, config.max_error)
        return ThresholdChoice(dict(selection.thresholds), [], None, patterns=dict(selection.patterns))
    thresholds = dict(uniform(curves, config.uniform_threshold).thresholds)
    # A layer where the predictor costs more than it saves stays as it was.
    for name, tau in thresholds.items():
        i = curves[name].index_of(tau)
        if curves[name].macs_after[i] >= curves[name].macs:
            thresholds[name] = -math.inf
    return ThresholdChoice(thresholds, [], None)


def optimize(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None, calib: Any, *,
             config: OptimizeConfig = OptimizeConfig(), eval_data: Any = None,
             image_options: ImageOptions | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None,
             report_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None,
             progress: bool | None = None) -> OptimizeResult:
    """Train a ZAP per eligible layer and rewrite ``model``; write it to ``output`` if given.

    ``calib``/``eval_data``: any source ``zapopt.data.open_dataset`` accepts (image folder,
    .npy, .npz, ``embedded:...``). ``eval_data`` is required with ``config.max_drop``.
    The report (JSON) goes to ``report_path`` (default: ``OUTPUT`` + ``.report.json``);
    ``plot_path`` adds a PNG of every layer's measured error/savings curve.
    """
    started = time.perf_counter()
    if config.max_drop is None and eval_data is not None:
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
    original = _named(model)
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
                                  check=config.latency_check and config.output_format != "onnx",
                                  settings=latency_settings(config.latency_batch, config.latency_threads))
    rewritten = native.model
    if config.output_format == "onnx" and native_ops(rewritten):
        rewritten = ExpandZapToOnnx()(rewritten).model
    seconds = {"latency": time.perf_counter() - t0, "total": time.perf_counter() - started}
    report = ExactReport(model_name, output, chosen, ineligible, [n for n in eligible if n not in chosen], seconds)
    return OptimizeResult(rewritten, report, {}, native.latency)


def _native_zap_model(prepared: PreparedLayers, trained: Mapping[str, TrainedLayer],
                      thresholds: Mapping[str, float], config: OptimizeConfig,
                      sample: Callable[[int], np.ndarray] | None) -> NativeResult:
    """The ZAP layers as ZapConv and (``--format native``) every other Conv with a zero-able
    input as ZeroSkipConv, each kept only where the latency check finds it faster."""
    zap_names = [name for name, tau in thresholds.items() if tau != -math.inf]

    def zap_build(kept: frozenset[str]) -> onnx.ModelProto:
        return build_zap_model(prepared.original, trained,
                               {n: (tau if n in kept else -math.inf) for n, tau in thresholds.items()})

    zero_skip: list[str] = []
    if config.output_format == "native":
        eligible, _ = zero_skip_layers(prepared.original, exclude=set(zap_names))
        zero_skip = named_subset(eligible, config.layers, config.exclude)
    build = native_builder(prepared.original, zero_skip, zap_build)
    return choose_native_layers(prepared.original, build, [*zap_names, *zero_skip], sample=sample,
                                check=config.latency_check and config.output_format != "onnx",
                                settings=latency_settings(config.latency_batch, config.latency_threads))


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
        _no_zap_layer(choice, config)
    t0 = time.perf_counter()
    native = _native_zap_model(prepared, trained, thresholds, config, sample)
    seconds["latency"] = time.perf_counter() - t0
    stock_faster = {d.name for d in native.latency.layers if not d.native}
    layers: list[LayerReport] = []
    for name, layer in trained.items():
        tau = thresholds[name]
        if name in stock_faster:
            layers.append(LayerReport(name, "skipped", "the stock nodes are faster on this machine (latency check)",
                                      int(layer.curve.macs), layer.ofm_sparsity,
                                      oracle_macs_after=float(layer.curve.oracle_macs_after),
                                      train_seconds=layer.seconds,
                                      predictor_macs=float(layer.curve.predictor_macs),
                                      train_epochs=layer.params.epochs))
        elif tau == -math.inf:
            best = float(np.max(layer.curve.savings))
            if best <= 0:
                why = "the predictor costs more than it saves at every threshold"
            elif config.max_error is None and config.max_drop is None:
                why = f"at threshold {config.uniform_threshold:g} the predictor costs more than it saves"
            else:
                why = "leaving it exact fits the accuracy/error budget better"
            layers.append(LayerReport(name, "skipped", why, int(layer.curve.macs), layer.ofm_sparsity,
                                      oracle_macs_after=float(layer.curve.oracle_macs_after),
                                      train_seconds=layer.seconds,
                                      predictor_macs=float(layer.curve.predictor_macs),
                                      train_epochs=layer.params.epochs))
        else:
            layers.append(layer_report_from_curve(layer.curve, tau, ofm_sparsity=layer.ofm_sparsity,
                                                  train_seconds=layer.seconds, train_epochs=layer.params.epochs,
                                                  pattern=layer.pattern))
    agreement = None
    if prepared.held_out is not None and prepared.held_out_reference is not None:
        agreement = measure_agreement(build_zap_model(prepared.original, trained, thresholds), prepared.held_out,
                                      prepared.held_out_reference, progress)
    warn_about_losses([(l.name, l.error, l.threshold) for l in layers if l.status == "zap"],  # noqa: E741
                      agreement, config.max_drop is not None)
    rewritten = native.model
    if config.output_format == "onnx" and native_ops(rewritten):
        rewritten = ExpandZapToOnnx()(rewritten).model
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
    return OptimizeResult(rewritten, report, curves, native.latency)


def _no_zap_layer(choice: ThresholdChoice, config: OptimizeConfig) -> None:
    if choice.search:
        best = min(e["drop"] for e in choice.search)
        raise ZapoptError(f"no setting kept the accuracy drop within {config.max_drop}% (the smallest drop "
                          f"measured was {best:.2f}%); allow a larger --max-drop or use more --eval data")
    raise ZapoptError("no layer pays for its predictor at these settings; try a higher --threshold, "
                      "a larger --max-error, or another --pattern (or --exact: no predictors, exact outputs)")

