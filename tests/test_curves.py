"""Layer curves, checked against brute force."""
from __future__ import annotations

import json

import numpy as np
import pytest

import zapopt.curves as curves_module
from tests.curve_builders import measured_layer, random_predictor, synthetic_curve
from zapopt.curves import LayerCurve, default_taus, layer_curve
from zapopt.errors import ZapoptError
from zapopt.ops.patterns import get_pattern
from zapopt.predictor.inputs import PredictorInput
from zapopt.predictor.train import TrainedPredictor

layer = pytest.fixture(scope="module")(measured_layer)


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
    base = random_predictor(5, mask, seed=2)
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


def test_default_taus() -> None:
    taus = default_taus()
    assert taus[0] == -np.inf and taus[1] == -1.0 and taus[-1] == pytest.approx(1.5)
    assert {0.0, 0.1, 0.5, 0.99, -0.05} <= set(taus.tolist())
    assert np.all(np.diff(taus) > 0) and np.all(np.diff(taus.astype(np.float32)) > 0)


def test_compute_curves_reads_every_layer_from_a_store(layer) -> None:
    ofm, mask, predictor, curve = layer

    class Store:
        def layer_array(self, name: str) -> np.ndarray:
            return {"a": ofm, "b": ofm[:2]}[name]

    curves = curves_module.compute_curves(
        Store(), {"a": predictor, "b": predictor}, {"a": curve.macs, "b": 1.0}, taus=curve.taus, progress=False
    )
    assert list(curves) == ["a", "b"] and curves["b"].images == 2
    np.testing.assert_array_equal(curves["a"].error, curve.error)
    with pytest.raises(ZapoptError, match="no MAC count"):
        curves_module.compute_curves(Store(), {"a": predictor}, {}, progress=False)


def test_index_of_finds_measured_thresholds_only() -> None:
    curve = synthetic_curve("c", np.random.default_rng(3))
    for i, tau in enumerate(curve.taus):
        assert curve.index_of(float(tau)) == i
    assert curve.index_of(12345.0) is None
