"""Build the model ``optimize`` writes from trained layers and chosen thresholds: ZapConv
for the ZAP layers, ZeroSkipConv for the other zero-able Convs (``--format native``), each
kept only where the latency check finds it faster, in the asked-for output format."""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import onnx

from zapopt.latency import EXACT_FALLBACK_NOTE, LatencyReport
from zapopt.layer_selection import named_subset
from zapopt.layer_training import TrainedLayer
from zapopt.native_model import NativeResult, choose_native_layers, native_builder, native_ops, zero_skip_layers
from zapopt.ops.patterns import get_pattern
from zapopt.optimize_config import OptimizeConfig
from zapopt.rewrite.expand import ExpandZapToOnnx
from zapopt.rewrite.replace import ReplaceWithZap, ZapParams
from zapopt.zap_info import EXPECTED_MACS_KEY


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


def native_zap_model(original: onnx.ModelProto, trained: Mapping[str, TrainedLayer],
                     thresholds: Mapping[str, float], config: OptimizeConfig,
                     sample: Callable[[int], np.ndarray] | None) -> NativeResult:
    """The ZAP layers as ZapConv and (``--format native``) every other Conv with a zero-able
    input as ZeroSkipConv, each kept only where the latency check finds it faster."""
    zap_names = [name for name, tau in thresholds.items() if tau != -math.inf]

    def zap_build(kept: frozenset[str]) -> onnx.ModelProto:
        return build_zap_model(original, trained, {n: (tau if n in kept else -math.inf) for n, tau in thresholds.items()})

    zero_skip: list[str] = []
    if config.output_format == "native":
        eligible, _ = zero_skip_layers(original, exclude=set(zap_names))
        zero_skip = named_subset(eligible, config.layers, config.exclude)
    build = native_builder(original, zero_skip, zap_build)
    result = choose_native_layers(original, build, [*zap_names, *zero_skip], sample=sample,
                                  check=config.checks_latency, settings=config.latency_points)
    if config.output_format != "native" or not result.latency.measured or not zap_names:
        return result
    return faster_of(result, exact_form(original, config, sample))


def exact_form(original: onnx.ModelProto, config: OptimizeConfig,
               sample: Callable[[int], np.ndarray] | None) -> NativeResult | None:
    """The exact form (ZeroSkipConv on every zero-able Conv, the ZAP layers included:
    original outputs) through the same latency check; None if no Conv can take it."""
    eligible, _ = zero_skip_layers(original)
    candidates = named_subset(eligible, config.layers, config.exclude)
    if not candidates:
        return None
    return choose_native_layers(original, native_builder(original, candidates), candidates, sample=sample,
                                check=True, settings=config.latency_points)


def measured_speedup(report: LatencyReport) -> float:
    """The written model's end-to-end speed-up at its slowest checked setting (1.0: the
    original graph was written)."""
    checks = report.deciding_checks
    return min(c.speedup.median for c in checks) if checks else 1.0


def faster_of(zap: NativeResult, exact: NativeResult | None) -> NativeResult:
    """The ZAP form, unless the exact form measured faster: on CPUs the zero inputs are what
    the kernel skips best (ZapConv's predicted zero outputs rarely fill a whole vector block),
    and the exact form loses no accuracy, so ZAP mode is never slower than --exact. The
    report keeps both checks, the exact one's rounds numbered after the ZAP ones."""
    if exact is None or measured_speedup(exact.latency) <= measured_speedup(zap.latency):
        return zap
    offset = max((c.round for c in zap.latency.model_checks), default=0)
    zap_layers = [replace(d, native=False, reason=f"{d.reason}; the exact form measured faster and was written")
                  if d.native else d for d in zap.latency.layers]
    report = LatencyReport(
        True, layers=[*zap_layers, *exact.latency.layers],
        model_checks=[*zap.latency.model_checks, *(replace(c, round=c.round + offset) for c in exact.latency.model_checks)],
        note=EXACT_FALLBACK_NOTE, settings=exact.latency.settings, exact_form_written=True)
    return NativeResult(exact.model, report)


def in_output_format(model: onnx.ModelProto, output_format: str) -> onnx.ModelProto:
    """``model`` as ``--format`` asks: ``onnx`` expands every native node into standard ops."""
    if output_format == "onnx" and native_ops(model):
        return ExpandZapToOnnx()(model).model
    return model
