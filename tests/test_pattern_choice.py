"""Choosing the pattern per layer: parsing, merged (pattern, threshold) options, and the knapsack over both."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from zapopt.curves import LayerCurve, default_taus
from zapopt.errors import ZapoptError
from zapopt.optimize import ErrorBudget, OptimizeConfig, UniformThreshold
from zapopt.pattern_choice import PAPER_PATTERNS, merge_curves, parse_patterns
from zapopt.thresholds import error_budget


def test_parse_patterns() -> None:
    assert parse_patterns("checkerboard") == ("checkerboard",)
    assert parse_patterns(" checkerboard, diag3x3-33 ") == ("checkerboard", "diag3x3-33")
    assert parse_patterns("auto") == PAPER_PATTERNS
    for bad, match in (("", "empty"), ("checkerboard,checkerboard", "twice"), ("checkerboard,nope", "unknown")):
        with pytest.raises(ZapoptError, match=match):
            parse_patterns(bad)


def test_several_patterns_need_a_per_layer_budget() -> None:
    with pytest.raises(ZapoptError, match="per-layer budget"):
        OptimizeConfig(pattern="auto")
    with pytest.raises(ZapoptError, match="per-layer budget"):
        OptimizeConfig(UniformThreshold(0.2), pattern="auto")
    assert OptimizeConfig(ErrorBudget(0.1), pattern="auto").patterns == PAPER_PATTERNS


def _curve(name: str, saved_scale: float, error_scale: float, seed: int) -> LayerCurve:
    """A synthetic but well-formed curve: error and savings rise with the threshold."""
    taus = default_taus()
    rng = np.random.default_rng(seed)
    k = taus.size
    steps = np.sort(rng.random(k))
    macs = 1000.0
    return LayerCurve(name=name, taus=taus, shape=(4, 6, 6), images=10, macs=macs, predictor_macs=50.0,
                      pattern_fraction=0.5, true_zero_share=0.5, predicted_zero=steps, false_zero=steps / 10,
                      false_nonzero=1 - steps, error=error_scale * steps ** 2,
                      macs_after=macs - saved_scale * steps * macs, oracle_macs_after=400.0 + seed)


def test_merged_points_are_real_options_and_the_knapsack_takes_the_best_of_both() -> None:
    patterns = ("checkerboard", "diag3x3-33")
    # layer a: diag saves more for the same error; layer b: the checkerboard does.
    curves = {"checkerboard": {"a": _curve("a", 0.3, 0.1, 1), "b": _curve("b", 0.5, 0.1, 2)},
              "diag3x3-33": {"a": _curve("a", 0.6, 0.1, 1), "b": _curve("b", 0.2, 0.1, 2)}}
    merged = merge_curves(curves)
    assert merged["a"].taus.size == 2 * (default_taus().size - 1)  # -inf is the knapsack's own option
    assert merged["a"].oracle_macs_after == 401.0
    for layer in ("a", "b"):
        curve = merged[layer]
        for index, tau in enumerate(curve.taus):
            pattern = curve.pattern_at(index)
            own = curves[pattern][layer]
            assert tau in own.taus  # exact: the report reads curves by equality
            assert curve.error[index] == own.error[own.index_of(float(tau))]
            assert curve.index_of(float(tau), pattern) == index
    assert merged["a"].index_of(0.123456, "checkerboard") is None
    assert merged["a"].index_of(0.5) is None  # on several patterns a threshold alone is no option
    budget = 0.06
    chosen = error_budget(merged, budget)
    assert chosen.patterns == {"a": "diag3x3-33", "b": "checkerboard"}
    assert chosen.to_dict()["patterns"] == chosen.patterns

    def saved(choice: dict[str, str], thresholds: dict[str, float]) -> float:
        total = 0.0
        for layer, tau in thresholds.items():
            if tau != -math.inf:
                curve = curves[choice[layer]][layer]
                total += curve.macs - float(curve.macs_after[np.flatnonzero(curve.taus == tau)[0]])
        return total

    mixed = saved(chosen.patterns, chosen.thresholds)
    assert mixed == pytest.approx(chosen.macs_before - chosen.macs_after)
    for pattern in patterns:
        single = error_budget(curves[pattern], budget)
        assert not single.patterns
        assert mixed > single.macs_before - single.macs_after


def test_a_merged_curve_checks_its_patterns_and_keeps_them_in_json() -> None:
    merged = merge_curves({"checkerboard": {"a": _curve("a", 0.3, 0.1, 1)},
                           "diag3x3-33": {"a": _curve("a", 0.6, 0.1, 1)}})["a"]
    back = LayerCurve.from_dict(merged.to_dict())
    assert back.patterns == merged.patterns
    np.testing.assert_array_equal(back.taus, merged.taus)
    with pytest.raises(ZapoptError, match="patterns for"):
        replace(merged, patterns=merged.patterns[1:])
    swapped = np.concatenate([merged.taus[1::-1], merged.taus[2:]])  # first two checkerboard points swapped
    with pytest.raises(ZapoptError, match="increasing list per pattern"):
        replace(merged, taus=swapped)


def test_the_same_thresholds_with_other_patterns_are_another_choice() -> None:
    from zapopt.thresholds import choice_key

    assert choice_key({"a": 0.5}, {"a": "checkerboard"}) != choice_key({"a": 0.5}, {"a": "diag3x3-33"})
    assert choice_key({"a": 0.5, "b": 0.1}, {}) == choice_key({"b": 0.1, "a": 0.5}, {})


def test_report_table_names_each_layers_pattern_only_when_they_differ() -> None:
    from zapopt.report import LayerReport, OptimizeReport

    def layer(name: str, pattern: str) -> LayerReport:
        return LayerReport(name, "zap", "", 1000, ofm_sparsity=0.5, threshold=0.3, predicted_zero=0.4,
                           false_zero=0.01, false_nonzero=0.1, error=0.01, macs_after=800.0,
                           oracle_macs_after=600.0, pattern=pattern)

    def table(*patterns: str) -> str:
        layers = [layer(f"conv{i}", p) for i, p in enumerate(patterns)]
        return OptimizeReport("m.onnx", None, "auto", "error budget 0.1", 64, 16, 5000, layers, []).format_table()

    mixed = table("checkerboard", "diag3x3-33")
    assert "conv0 [checkerboard]" in mixed and "conv1 [diag3x3-33]" in mixed
    assert "[checkerboard]" not in table("checkerboard", "checkerboard")
