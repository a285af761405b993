"""Per-layer sensitivity weights for the --max-drop search."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.test_thresholds import _synthetic_curve
from zapopt.errors import ZapoptError
from zapopt.sensitivity import (
    WEIGHT_FLOOR,
    layer_sensitivities,
    output_divergence,
    probe_index,
    weight_curves,
)


def test_output_divergence_is_the_softmax_kl() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    p = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    assert output_divergence(a, b) == pytest.approx(float(np.mean(np.sum(p * np.log(p / q), 1))))
    assert output_divergence(a, a) == pytest.approx(0.0, abs=1e-12)
    assert output_divergence(a, a + 3.0) == pytest.approx(0.0, abs=1e-12)  # a shift is no change
    assert output_divergence(a * 1000, b * 1000) > 0  # no overflow
    with pytest.raises(ZapoptError, match="equal"):
        output_divergence(a, b[:3])


def test_probe_index_picks_the_lossy_point_nearest_the_probe_error() -> None:
    curve = _synthetic_curve("c", np.random.default_rng(1), points=6)
    errors = curve.error.copy()
    index = probe_index(curve, 0.02)
    lossy = np.flatnonzero(errors > 0)
    assert index in lossy
    distances = np.abs(np.log(errors[lossy] / 0.02))
    assert distances.min() == pytest.approx(abs(math.log(errors[index] / 0.02)))
    flat = _synthetic_curve("flat", np.random.default_rng(2))
    flat = type(flat)(**{**flat.__dict__, "error": np.zeros_like(flat.error)})
    assert probe_index(flat) is None


def _curves(seed: int = 3, layers: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    curves = {}
    while len(curves) < layers:
        curve = _synthetic_curve(f"l{len(curves)}", rng, points=6)
        if probe_index(curve) is not None:
            curves[curve.name] = curve
    return curves


def test_weights_are_divergence_per_error_with_mean_one() -> None:
    curves = _curves()
    harm = {"l0": 1.0, "l1": 2.0, "l2": 4.0, "l3": 8.0}
    calls = []

    def divergence_of(thresholds: dict[str, float]) -> float:
        calls.append(thresholds)
        ((name, tau),) = thresholds.items()  # one layer at a time
        index = int(np.flatnonzero(curves[name].taus == tau)[0])
        return harm[name] * curves[name].error[index]

    found = layer_sensitivities(curves, divergence_of)
    assert len(calls) == 4
    weights = np.array([found[n].weight for n in curves])
    assert weights.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(weights / weights[0], [1, 2, 4, 8])
    weighted = weight_curves(curves, found)
    for name, curve in curves.items():
        np.testing.assert_allclose(weighted[name].error, curve.error * found[name].weight)
        np.testing.assert_array_equal(weighted[name].macs_after, curve.macs_after)


def test_a_layer_measured_harmless_is_floored_and_an_unprobed_layer_gets_the_mean() -> None:
    curves = _curves()
    flat = curves["l3"]
    curves["l3"] = type(flat)(**{**flat.__dict__, "error": np.zeros_like(flat.error)})
    found = layer_sensitivities(curves, lambda th: 0.0 if "l0" in th else 0.01)
    assert found["l3"].tau is None and found["l3"].weight == pytest.approx(1.0)
    raw = {n: 0.01 / found[n].error for n in ("l1", "l2")}
    floor = WEIGHT_FLOOR * float(np.median(list(raw.values())))
    assert found["l0"].weight / found["l1"].weight == pytest.approx(floor / raw["l1"])


def test_bad_divergence_and_arguments_are_errors() -> None:
    curves = _curves()
    with pytest.raises(ZapoptError, match="divergence"):
        layer_sensitivities(curves, lambda th: float("nan"))
    with pytest.raises(ZapoptError, match="probe_error"):
        layer_sensitivities(curves, lambda th: 0.1, probe_error=0.0)
    with pytest.raises(ZapoptError, match="no sensitivity"):
        weight_curves(curves, {})
    uniform = layer_sensitivities(curves, lambda th: 0.0)  # nothing measurable: unweighted
    assert all(s.weight == 1.0 for s in uniform.values())


def test_drop_standard_error_matches_the_paired_and_binomial_formulas() -> None:
    from zapopt.evaluate import accuracy_drop, accuracy_drop_standard_error

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    eye = np.eye(3)
    reference = eye[[0, 1, 2, 0, 1, 2, 1, 0]]  # 6 of 8 right
    candidate = eye[[0, 1, 0, 0, 1, 2, 0, 0]]  # one broken (image 2), one fixed (image 6)
    diff = np.array([0, 0, 1, 0, 0, 0, -1, 0], dtype=float)
    assert accuracy_drop(reference, candidate, labels) == pytest.approx(100 * diff.mean())
    assert accuracy_drop_standard_error(reference, candidate, labels) == pytest.approx(
        100 * diff.std(ddof=1) / np.sqrt(8))
    p = 2 / 8  # two predictions changed
    assert accuracy_drop_standard_error(reference, candidate, None) == pytest.approx(100 * np.sqrt(p * (1 - p) / 8))
    assert accuracy_drop_standard_error(reference, reference, labels) == 0.0
