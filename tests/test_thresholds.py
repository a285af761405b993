"""Threshold selection: uniform, error budget (against brute force), accuracy target."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest

import zapopt.thresholds as thresholds_module
from tests.curve_builders import measured_layer, synthetic_curve
from zapopt.curves import LayerCurve
from zapopt.errors import ZapoptError
from zapopt.thresholds import accuracy_target, error_budget, uniform

layer = pytest.fixture(scope="module")(measured_layer)


def _brute_force(curves: dict[str, LayerCurve], budget: float) -> float:
    options = []
    for curve in curves.values():
        finite = np.isfinite(curve.taus)
        options.append([(0.0, 0.0)] + list(zip(curve.error[finite], curve.macs - curve.macs_after[finite])))
    best = -math.inf
    for combo in itertools.product(*options):
        if sum(e for e, _ in combo) <= budget * (1 + 1e-12):
            best = max(best, sum(s for _, s in combo))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_error_budget_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    curves = {f"l{i}": synthetic_curve(f"l{i}", rng) for i in range(4)}
    for budget in (0.0, 0.01, 0.03, 0.07, 1.0):
        chosen = error_budget(curves, budget)
        assert chosen.error <= budget * (1 + 1e-12)
        assert chosen.macs_before - chosen.macs_after == pytest.approx(_brute_force(curves, budget))


def test_error_budget_stays_within_budget_when_frontier_is_bucketed(monkeypatch) -> None:
    rng = np.random.default_rng(11)
    curves = {f"l{i}": synthetic_curve(f"l{i}", rng, points=8) for i in range(5)}
    exact = error_budget(curves, 0.08)
    monkeypatch.setattr(thresholds_module, "_FRONTIER_CAP", 10)
    coarse = error_budget(curves, 0.08)
    assert coarse.error <= 0.08
    assert 0.5 * exact.savings <= coarse.savings <= exact.savings + 1e-12


def test_uniform(layer) -> None:
    curve = layer[3]
    chosen = uniform({"a": curve, "b": curve}, float(curve.taus[5]))
    assert dict(chosen.thresholds) == {"a": curve.taus[5], "b": curve.taus[5]}
    assert chosen.macs_after == pytest.approx(2 * curve.macs_after[5])
    assert chosen.error == pytest.approx(2 * curve.error[5])
    original = uniform({"a": curve}, -math.inf)
    assert original.savings == 0 and original.error == 0
    with pytest.raises(ZapoptError, match="not measured"):
        uniform({"a": curve}, 0.123456)


def test_accuracy_target_respects_the_limit_with_few_evaluations() -> None:
    rng = np.random.default_rng(5)
    curves = {f"l{i}": synthetic_curve(f"l{i}", rng, points=12) for i in range(6)}
    calls: list[dict[str, float]] = []

    def evaluate(thresholds: dict[str, float], patterns: dict[str, str]) -> float:
        assert patterns == {}  # curves of one pattern
        calls.append(thresholds)
        return 40.0 * uniform_error(curves, thresholds)  # monotone in the calibration error

    result = accuracy_target(curves, 1.0, evaluate, max_evaluations=10)
    assert result.drop is not None and result.drop <= 1.0
    assert 1 <= len(calls) <= 10 and len(result.evaluations) >= len(calls)
    assert result.drop == pytest.approx(40.0 * result.selection.error)
    # Close to the best selection whose true drop fits (budget 1/40), within the tolerance.
    assert result.selection.savings >= error_budget(curves, 1.0 / 40 / 1.1).savings - 1e-12
    assert all(e.feasible == (e.drop <= 1.0) for e in result.evaluations)
    json.dumps(result.to_dict(), allow_nan=False)


def uniform_error(curves: dict[str, LayerCurve], thresholds: dict[str, float]) -> float:
    total = 0.0
    for name, tau in thresholds.items():
        if tau != -math.inf:
            total += float(curves[name].error[np.flatnonzero(curves[name].taus == tau)[0]])
    return total


def test_accuracy_target_falls_back_to_the_original_model() -> None:
    rng = np.random.default_rng(6)
    curves = {f"l{i}": synthetic_curve(f"l{i}", rng) for i in range(3)}
    result = accuracy_target(curves, 0.5, lambda thresholds, patterns: 99.0, max_evaluations=4)
    assert result.drop is None
    assert all(t == -math.inf for t in result.selection.thresholds.values())
    assert len(result.evaluations) <= 4
    with pytest.raises(ZapoptError, match="drop limit"):
        accuracy_target(curves, -1, lambda thresholds, patterns: 0.0)


def test_accuracy_target_takes_everything_when_everything_fits() -> None:
    rng = np.random.default_rng(7)
    curves = {f"l{i}": synthetic_curve(f"l{i}", rng) for i in range(3)}
    result = accuracy_target(curves, 5.0, lambda thresholds, patterns: 0.0)
    assert len(result.evaluations) == 1 and result.drop == 0.0
    assert result.selection.savings == pytest.approx(error_budget(curves, 10.0).savings)


def test_accuracy_target_interpolates_close_to_the_limit() -> None:
    """A smooth drop (here convex in the budget) is met to within a few % of the limit in
    few evaluations, where halving a log-scale bracket spanning decades would not be."""
    rng = np.random.default_rng(8)
    curves = {f"l{i}": synthetic_curve(f"l{i}", rng, points=40) for i in range(8)}

    def evaluate(thresholds: dict[str, float], patterns: dict[str, str]) -> float:
        error = uniform_error(curves, thresholds)
        return 30.0 * error + 300.0 * error**2

    result = accuracy_target(curves, 1.5, evaluate, max_evaluations=8)
    assert result.drop is not None and result.drop <= 1.5
    # The best point of the frontier that fits, found by brute force over budgets:
    budgets = np.linspace(0.0, 0.2, 4001)
    fits = [error_budget(curves, b) for b in budgets]
    best = max(sel.savings for sel in fits if evaluate(dict(sel.thresholds), {}) <= 1.5)
    assert result.selection.savings >= best - 0.02 * abs(best)
    assert len(result.evaluations) <= 8


def test_next_budget_interpolates_inside_the_bracket() -> None:
    step = thresholds_module._next_budget
    assert step(0.0, 0.0, 1.0, 2.0, 1.0, 1e-6) == pytest.approx(0.5)  # linear: the crossing itself
    assert step(0.0, 0.0, 10.0, 100.0, 1.0, 1e-6) == pytest.approx(1.0)  # at most 10x down per step
    assert step(1.0, 0.9, 2.0, 50.0, 1.0, 1e-6) == pytest.approx(1.1)  # at least 10 % into the bracket
    assert step(1.0, 0.2, 2.0, 1.01, 1.0, 1e-6) == pytest.approx(1.9)  # at most 90 %
    assert step(1.0, 0.5, 2.0, 0.4, 1.0, 1e-6) == pytest.approx(1.5)  # noisy, no slope: halve
    assert step(0.0, 0.0, 1e-7, 5.0, 1.0, 1e-6) is None  # nothing worth measuring below the floor
    assert step(0.0, 0.0, 1e-3, 5.0, 1.0, 1e-3 * 0.5) == pytest.approx(5e-4)  # never below the floor


def test_monotone_fit_pools_violators() -> None:
    fit = thresholds_module.monotone_fit
    assert fit([0.0, 1.0, 2.0]) == [0.0, 1.0, 2.0]
    assert fit([0.0, 1.6, 1.2, 2.0]) == pytest.approx([0.0, 1.4, 1.4, 2.0])
    assert fit([0.0, 3.0, 1.0, 1.0]) == pytest.approx([0.0, 5 / 3, 5 / 3, 5 / 3])
    assert fit([]) == []


def test_accuracy_target_does_not_take_a_lucky_draw() -> None:
    """A larger budget that measures below the limit right after a smaller one measured
    above it is noise: the pick falls back to the largest point that fits the monotone fit."""
    rng = np.random.default_rng(9)
    curves = {f"l{i}": synthetic_curve(f"l{i}", rng, points=30) for i in range(6)}
    drops = {0.01: 0.5, 0.02: 1.2, 0.025: 0.95, 0.03: 1.8}
    evaluations = [thresholds_module.Evaluation(b, error_budget(curves, b), d, d <= 1.0) for b, d in drops.items()]
    assert evaluations[2].selection.savings > evaluations[0].selection.savings
    annotated, best = thresholds_module._pick_monotone(evaluations, 1.0)
    assert best is not None and best.budget == 0.01
    assert [e.monotone_drop for e in annotated] == pytest.approx([0.5, 1.075, 1.075, 1.8])
    # Without the violation the largest raw fit wins.
    clean = [replace(e, drop=d, feasible=d <= 1.0) for e, d in zip(evaluations, (0.5, 0.8, 0.95, 1.8))]
    assert thresholds_module._pick_monotone(clean, 1.0)[1].budget == 0.025
    found = thresholds_module.accuracy_target(curves, 1.0, lambda t, _: 40.0 * uniform_error(curves, t))
    json.dumps(found.to_dict())
