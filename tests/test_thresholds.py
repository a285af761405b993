"""Layer curves (checked against brute force) and threshold selection."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import zapopt.thresholds as thresholds_module
from zapopt.errors import ZapoptError
from zapopt.ops.patterns import get_pattern
from zapopt.predictor.inputs import PredictorInput
from zapopt.predictor.model import ZapPredictor
from zapopt.predictor.train import TrainedPredictor
from zapopt.thresholds import (
    LayerCurve,
    accuracy_target,
    default_taus,
    error_budget,
    layer_curve,
    uniform,
)


def _random_predictor(channels: int, mask: np.ndarray, seed: int) -> TrainedPredictor:
    torch.manual_seed(seed)
    model = ZapPredictor(channels)
    with torch.no_grad():
        model.bn2.bias.fill_(0.3)
    model.eval()
    return TrainedPredictor(model.fold(), mask, epochs=0, images=0, seconds=0.0, epoch_losses=())


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    ofm = np.maximum(rng.standard_normal((5, 6, 7, 9)), 0).astype(np.float32)
    mask = get_pattern("checkerboard").mask(7, 9)
    predictor = _random_predictor(6, mask, seed=1)
    taus = np.concatenate([[-np.inf], np.linspace(-0.5, 1.0, 16)])
    curve = layer_curve("conv", ofm, predictor, macs=6 * 7 * 9 * 54, taus=taus,
                        tiles=((1, 2), (2, 3), (4, 8)), batch_size=2)
    return ofm, mask, predictor, curve


def test_curve_matches_brute_force(layer) -> None:
    ofm, mask, predictor, curve = layer
    n, c, h, w = ofm.shape
    t = ~mask
    macs = 6 * 7 * 9 * 54
    for i, tau in enumerate(curve.taus):
        computed = predictor.computed(ofm, float(tau))
        zero_pred = ~computed[:, :, t]
        nonzero = ofm[:, :, t] > 0
        assert curve.predicted_zero[i] == pytest.approx(zero_pred.mean())
        assert curve.false_zero[i] == pytest.approx((zero_pred & nonzero).mean())
        assert curve.false_nonzero[i] == pytest.approx((~zero_pred & ~nonzero).mean())
        y = ofm.astype(np.float64)
        assert curve.error[i] == pytest.approx(1 - (y * computed).sum() / y.sum())
        expected_macs = macs * mask.mean() + 18 * c * h * w + macs * (~zero_pred).sum() / (n * c * h * w)
        assert curve.macs_after[i] == pytest.approx(expected_macs)


def test_preactivation_curve_scores_v_and_measures_relu_v() -> None:
    """Stored pre-activations: scores come from V, targets and errors from clip(relu(V))."""
    rng = np.random.default_rng(4)
    v = (rng.standard_normal((4, 5, 6, 8)) * 3).astype(np.float32)
    mask = get_pattern("checkerboard").mask(6, 8)
    base = _random_predictor(5, mask, seed=2)
    source = PredictorInput("preactivation", 2.0)
    predictor = TrainedPredictor(base.folded, mask, epochs=0, images=0, seconds=0.0, epoch_losses=(),
                                 predictor_input=source)
    taus = np.concatenate([[-np.inf], np.linspace(-1.0, 1.0, 9)])
    curve = layer_curve("conv", v, predictor, macs=1000.0, taus=taus)
    y = np.clip(v, 0, 2.0).astype(np.float64)
    t = ~mask
    for i, tau in enumerate(taus):
        computed = predictor.computed(v, float(tau))  # scores of V * S
        assert curve.error[i] == pytest.approx(1 - (y * computed).sum() / y.sum())
        assert curve.false_zero[i] == pytest.approx((~computed[:, :, t] & (y[:, :, t] > 0)).mean())
    assert curve.true_zero_share == pytest.approx((y[:, :, t] == 0).mean())
    # The same stored array read as an ofm would measure something else.
    as_ofm = layer_curve("conv", v, predictor, macs=1000.0, taus=taus, predictor_input=PredictorInput())
    assert not np.allclose(as_ofm.error, curve.error)


def _brute_tile_share(skip: np.ndarray, mask: np.ndarray, a: int, b: int) -> float:
    """Direct loops over the tiles as layer_curve's docstring defines them."""
    n, c, h, _ = skip.shape
    inside = total = 0
    for image in range(n):
        for row in range(h):
            columns = list(np.flatnonzero(~mask[row]))
            for c0 in range(0, c, a):
                for g in range(0, len(columns), b):
                    cells = [(ch, col) for ch in range(c0, min(c0 + a, c)) for col in columns[g : g + b]]
                    if all(skip[image, ch, row, col] for ch, col in cells):
                        inside += len(cells)
            total += sum(skip[image, ch, row, col] for ch in range(c) for col in columns)
    return inside / total if total else 0.0


def test_tile_shares_match_brute_force(layer) -> None:
    ofm, mask, predictor, curve = layer
    for key, (a, b) in {"1x2": (1, 2), "2x3": (2, 3), "4x8": (4, 8)}.items():
        for i in (3, 9, 16):
            skip = ~predictor.computed(ofm, float(curve.taus[i]))
            assert curve.tile_shares[key][i] == pytest.approx(_brute_tile_share(skip, mask, a, b))
        assert curve.oracle_tile_shares[key] == pytest.approx(_brute_tile_share(ofm <= 0, mask, a, b))


def test_minus_inf_is_exact_and_oracle_bounds_lossless_points(layer) -> None:
    _, mask, _, curve = layer
    assert curve.taus[0] == -np.inf
    assert curve.error[0] == 0 and curve.predicted_zero[0] == 0 and curve.false_zero[0] == 0
    assert curve.savings[0] <= 0  # everything computed, plus the predictor
    assert np.all(np.diff(curve.predicted_zero) >= 0) and np.all(np.diff(curve.error) >= 0)
    lossless = curve.false_zero == 0
    assert lossless.sum() >= 2
    assert np.all(curve.savings[lossless] <= curve.oracle_savings + 1e-12)
    assert curve.oracle_savings <= 1 - mask.mean() + 1e-12


def test_curve_round_trips_through_strict_json(layer) -> None:
    curve = layer[3]
    text = json.dumps(curve.to_dict(), allow_nan=False)
    back = LayerCurve.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.taus, curve.taus)
    np.testing.assert_array_equal(back.macs_after, curve.macs_after)
    np.testing.assert_array_equal(back.tile_shares["2x3"], curve.tile_shares["2x3"])
    assert back.oracle_savings == curve.oracle_savings


def test_curve_rejects_mismatched_mask(layer) -> None:
    ofm, _, predictor, _ = layer
    with pytest.raises(ZapoptError, match="does not fit"):
        layer_curve("conv", ofm[:, :, :6], predictor, macs=1.0)
    with pytest.raises(ZapoptError, match="increasing"):
        layer_curve("conv", ofm, predictor, macs=1.0, taus=[0.2, 0.1])


def _synthetic_curve(name: str, rng: np.random.Generator, points: int = 4) -> LayerCurve:
    taus = np.concatenate([[-np.inf], np.sort(rng.choice(np.arange(1, 60), points, replace=False)) / 100])
    macs = float(rng.integers(1000, 5000))
    saved = np.concatenate([[-0.1], np.sort(rng.uniform(-0.05, 0.5, points))]) * macs
    error = np.concatenate([[0.0], np.sort(rng.uniform(0, 0.05, points)) * (rng.random(points) > 0.2)])
    error = np.maximum.accumulate(error)
    zeros = np.zeros(points + 1)
    return LayerCurve(name=name, taus=taus, shape=(1, 1, 1), images=1, macs=macs, predictor_macs=0.0,
                      pattern_fraction=0.5, true_zero_share=0.5, predicted_zero=zeros, false_zero=zeros,
                      false_nonzero=zeros, error=error, macs_after=macs - saved, oracle_macs_after=0.0)


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
    curves = {f"l{i}": _synthetic_curve(f"l{i}", rng) for i in range(4)}
    for budget in (0.0, 0.01, 0.03, 0.07, 1.0):
        chosen = error_budget(curves, budget)
        assert chosen.error <= budget * (1 + 1e-12)
        assert chosen.macs_before - chosen.macs_after == pytest.approx(_brute_force(curves, budget))


def test_error_budget_stays_within_budget_when_frontier_is_bucketed(monkeypatch) -> None:
    rng = np.random.default_rng(11)
    curves = {f"l{i}": _synthetic_curve(f"l{i}", rng, points=8) for i in range(5)}
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
    curves = {f"l{i}": _synthetic_curve(f"l{i}", rng, points=12) for i in range(6)}
    calls: list[dict[str, float]] = []

    def evaluate(thresholds: dict[str, float]) -> float:
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
    curves = {f"l{i}": _synthetic_curve(f"l{i}", rng) for i in range(3)}
    result = accuracy_target(curves, 0.5, lambda thresholds: 99.0, max_evaluations=4)
    assert result.drop is None
    assert all(t == -math.inf for t in result.selection.thresholds.values())
    assert len(result.evaluations) <= 4
    with pytest.raises(ZapoptError, match="drop limit"):
        accuracy_target(curves, -1, lambda thresholds: 0.0)


def test_default_taus() -> None:
    taus = default_taus()
    assert taus[0] == -np.inf and taus[1] == -1.0 and taus[-1] == pytest.approx(1.5)
    assert {0.0, 0.1, 0.5, 0.99, -0.05} <= set(taus.tolist())
    assert np.all(np.diff(taus) > 0) and np.all(np.diff(taus.astype(np.float32)) > 0)


def test_accuracy_target_takes_everything_when_everything_fits() -> None:
    rng = np.random.default_rng(7)
    curves = {f"l{i}": _synthetic_curve(f"l{i}", rng) for i in range(3)}
    result = accuracy_target(curves, 5.0, lambda thresholds: 0.0)
    assert len(result.evaluations) == 1 and result.drop == 0.0
    assert result.selection.savings == pytest.approx(error_budget(curves, 10.0).savings)


def test_compute_curves_reads_every_layer_from_a_store(layer) -> None:
    ofm, mask, predictor, curve = layer

    class Store:
        def layer_array(self, name: str) -> np.ndarray:
            return {"a": ofm, "b": ofm[:2]}[name]

    curves = thresholds_module.compute_curves(
        Store(), {"a": predictor, "b": predictor}, {"a": curve.macs, "b": 1.0}, taus=curve.taus, progress=False
    )
    assert list(curves) == ["a", "b"] and curves["b"].images == 2
    np.testing.assert_array_equal(curves["a"].error, curve.error)
    with pytest.raises(ZapoptError, match="no MAC count"):
        thresholds_module.compute_curves(Store(), {"a": predictor}, {}, progress=False)


def test_accuracy_target_interpolates_close_to_the_limit() -> None:
    """A smooth drop (here convex in the budget) is met to within a few % of the limit in
    few evaluations, where halving a log-scale bracket spanning decades would not be."""
    rng = np.random.default_rng(8)
    curves = {f"l{i}": _synthetic_curve(f"l{i}", rng, points=40) for i in range(8)}

    def evaluate(thresholds: dict[str, float]) -> float:
        error = uniform_error(curves, thresholds)
        return 30.0 * error + 300.0 * error**2

    result = accuracy_target(curves, 1.5, evaluate, max_evaluations=8)
    assert result.drop is not None and result.drop <= 1.5
    # The best point of the frontier that fits, found by brute force over budgets:
    budgets = np.linspace(0.0, 0.2, 4001)
    fits = [error_budget(curves, b) for b in budgets]
    best = max(sel.savings for sel in fits if evaluate(dict(sel.thresholds)) <= 1.5)
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
    curves = {f"l{i}": _synthetic_curve(f"l{i}", rng, points=30) for i in range(6)}
    drops = {0.01: 0.5, 0.02: 1.2, 0.025: 0.95, 0.03: 1.8}
    evaluations = [thresholds_module.Evaluation(b, error_budget(curves, b), d, d <= 1.0) for b, d in drops.items()]
    assert evaluations[2].selection.savings > evaluations[0].selection.savings
    annotated, best = thresholds_module._pick_monotone(evaluations, 1.0)
    assert best is not None and best.budget == 0.01
    assert [e.monotone_drop for e in annotated] == pytest.approx([0.5, 1.075, 1.075, 1.8])
    # Without the violation the largest raw fit wins.
    clean = [replace(e, drop=d, feasible=d <= 1.0) for e, d in zip(evaluations, (0.5, 0.8, 0.95, 1.8))]
    assert thresholds_module._pick_monotone(clean, 1.0)[1].budget == 0.025
    json.dumps(thresholds_module.accuracy_target(curves, 1.0, lambda t: 40.0 * uniform_error(curves, t)).to_dict())


def test_index_of_finds_measured_thresholds_only() -> None:
    curve = _synthetic_curve("c", np.random.default_rng(3))
    for i, tau in enumerate(curve.taus):
        assert curve.index_of(float(tau)) == i
    assert curve.index_of(12345.0) is None
