"""Per-layer sensitivity probes and divergence curves for the --max-drop search."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.curve_builders import synthetic_curve
from zapopt.curves import LayerCurve
from zapopt.errors import ZapoptError
from zapopt.sensitivity import (
    DIVERGENCE_FLOOR,
    PROBE_ERRORS,
    LayerSensitivity,
    SensitivityProbes,
    budgets_divergence,
    divergence_curves,
    layer_sensitivities,
    output_divergence,
    probe_index,
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
    curve = synthetic_curve("c", np.random.default_rng(1), points=6)
    errors = curve.error.copy()
    index = probe_index(curve, 0.02)
    lossy = np.flatnonzero(errors > 0)
    assert index in lossy
    distances = np.abs(np.log(errors[lossy] / 0.02))
    assert distances.min() == pytest.approx(abs(math.log(errors[index] / 0.02)))
    flat = synthetic_curve("flat", np.random.default_rng(2))
    flat = type(flat)(**{**flat.__dict__, "error": np.zeros_like(flat.error)})
    assert probe_index(flat, 0.02) is None


def _log_curve(name: str, errors: np.ndarray) -> LayerCurve:
    """A curve whose lossy points span ``errors`` (taus 0.01, 0.02, ...; savings grow with error)."""
    errors = np.concatenate([[0.0], errors])
    taus = np.concatenate([[-np.inf], np.arange(1, errors.size) / 100])
    zeros = np.zeros(errors.size)
    macs = 1000.0
    return LayerCurve(name=name, taus=taus, shape=(1, 1, 1), images=1, macs=macs, predictor_macs=0.0,
                      pattern_fraction=0.5, true_zero_share=0.5, predicted_zero=zeros, false_zero=zeros,
                      false_nonzero=zeros, error=errors, macs_after=macs * (1 - np.sqrt(errors)),
                      oracle_macs_after=0.0)


def _power_law_probe(curves: dict, harm: dict, power: dict, calls: list):
    def divergence_of(thresholds: dict[str, float], patterns: dict[str, str]) -> float:
        assert patterns == {}  # curves of one pattern
        calls.append(thresholds)
        ((name, tau),) = thresholds.items()  # one layer at a time
        index = int(np.flatnonzero(curves[name].taus == tau)[0])
        return harm[name] * curves[name].error[index] ** power[name]
    return divergence_of


def test_probes_run_each_layer_alone_at_the_points_nearest_the_probe_errors() -> None:
    curves = {n: _log_curve(n, np.geomspace(1e-4, 0.3, 40)) for n in ("a", "b")}
    calls: list = []
    found = layer_sensitivities(curves, _power_law_probe(curves, {"a": 1, "b": 2}, {"a": 1, "b": 2}, calls))
    assert len(calls) == 2 * len(PROBE_ERRORS) and all(len(c) == 1 for c in calls)
    for name, curve in curves.items():
        expected = [float(curve.error[probe_index(curve, e)]) for e in PROBE_ERRORS]
        assert list(found[name].errors) == expected
    # a curve with fewer distinct lossy points than probes is probed once per point
    short = {"s": _log_curve("s", np.array([0.02, 0.05]))}
    calls.clear()
    found = layer_sensitivities(short, _power_law_probe(short, {"s": 1}, {"s": 1}, calls))
    assert found["s"].errors == (0.02, 0.05) and len(calls) == 2


def test_the_estimate_interpolates_the_probes_and_extrapolates_a_power_law() -> None:
    curves = {n: _log_curve(n, np.geomspace(1e-4, 0.5, 60)) for n in ("linear", "square")}
    harm, power = {"linear": 0.5, "square": 3.0}, {"linear": 1.0, "square": 2.0}
    found = layer_sensitivities(curves, _power_law_probe(curves, harm, power, []))
    for name, curve in curves.items():
        # alone (so no other layer's floor binds), an exact power law through the probes is
        # recovered everywhere, also outside them (the square's slope is 2 on both ends)
        estimated = divergence_curves({name: curve}, {name: found[name]})
        np.testing.assert_allclose(estimated[name].error, harm[name] * curve.error ** power[name], rtol=1e-9)
        np.testing.assert_array_equal(estimated[name].macs_after, curve.macs_after)
        assert estimated[name].error[0] == 0.0  # computing everything costs nothing
    # A flatter-than-linear end is extrapolated linearly, and a noisy dip is not believed.
    sensitivity = LayerSensitivity("x", (0.1, 0.2, 0.3), (0.01, 0.02, 0.04), (1.0, 0.5, 1.2))
    values = sensitivity.raw_divergence_at(np.array([0.005, 0.01, 0.015, 0.02, 0.04, 0.08]))
    assert values[0] == pytest.approx(0.5)  # slope 1 below the first probe (measured: flat)
    assert values[2] == pytest.approx(1.0) and values[3] == pytest.approx(1.0)  # dip raised to the max so far
    assert values[5] == pytest.approx(2.4)  # slope 1 above (measured 0.26)
    assert np.all(np.diff(values) >= 0)
    single = LayerSensitivity("one", (0.1,), (0.02,), (4.0,))  # one probe: proportional on both sides
    np.testing.assert_allclose(single.raw_divergence_at(np.array([0.0, 0.01, 0.02, 0.08])), [0.0, 2.0, 4.0, 16.0])


def test_a_layer_measured_harmless_is_floored_and_an_unprobed_layer_keeps_its_curve() -> None:
    curves = {n: _log_curve(n, np.geomspace(1e-3, 0.2, 30)) for n in ("zero", "l1", "l2")}
    curves["flat"] = _log_curve("flat", np.zeros(5))
    found = layer_sensitivities(curves, _power_law_probe(curves, {"zero": 0.0, "l1": 1.0, "l2": 3.0, "flat": 1.0},
                                                         {n: 1.0 for n in curves}, []))
    assert not found["flat"].probed and found["flat"].to_dict()["divergence_at_1pct_error"] is None
    estimated = divergence_curves(curves, found)
    assert estimated["flat"] is curves["flat"]
    # the median of the layers that measured something is (1 + 3) / 2 x error; "zero" gets the floor of it
    np.testing.assert_allclose(estimated["zero"].error, DIVERGENCE_FLOOR * 2 * curves["zero"].error, rtol=1e-9)
    np.testing.assert_allclose(estimated["l2"].error, 3.0 * curves["l2"].error, rtol=1e-9)
    assert budgets_divergence(found)
    # nothing measurable anywhere: the plain error budget
    none = layer_sensitivities(curves, lambda th, patterns: 0.0)
    assert not budgets_divergence(none)
    for name, curve in divergence_curves(curves, none).items():
        np.testing.assert_array_equal(curve.error, curves[name].error)


def test_the_budget_goes_where_the_divergence_is_cheapest() -> None:
    """Two layers alike in mass error and savings, one whose output effect grows with the
    square of its error: with a divergence budget the convex layer takes the small
    errors and the linear one the rest, which a single linear weight cannot express."""
    from zapopt.thresholds import error_budget

    curves = {n: _log_curve(n, np.geomspace(1e-3, 0.2, 80)) for n in ("linear", "square")}
    harm, power = {"linear": 0.01, "square": 1.0}, {"linear": 1.0, "square": 2.0}
    estimated = divergence_curves(curves, layer_sensitivities(curves, _power_law_probe(curves, harm, power, [])))
    chosen = error_budget(estimated, 2e-4)
    errors = {n: float(curves[n].error[np.flatnonzero(curves[n].taus == chosen.thresholds[n])[0]]) for n in curves}
    divergence = sum(harm[n] * errors[n] ** power[n] for n in curves)
    assert divergence <= 2e-4 * (1 + 1e-9)
    assert 0.005 < errors["square"] < 0.015 and 0.005 < errors["linear"] < 0.02


def test_bad_divergence_and_arguments_are_errors() -> None:
    curves = {n: _log_curve(n, np.geomspace(1e-3, 0.2, 10)) for n in ("a", "b")}
    with pytest.raises(ZapoptError, match="divergence"):
        layer_sensitivities(curves, lambda th, patterns: float("nan"))
    with pytest.raises(ZapoptError, match="divergence"):
        layer_sensitivities(curves, lambda th, patterns: -1.0)
    with pytest.raises(ZapoptError, match="probe errors"):
        layer_sensitivities(curves, lambda th, patterns: 0.1, probe_errors=(0.0,))
    with pytest.raises(ZapoptError, match="probe errors"):
        layer_sensitivities(curves, lambda th, patterns: 0.1, probe_errors=())
    with pytest.raises(ZapoptError, match="no layers"):
        layer_sensitivities({}, lambda th, patterns: 0.1)
    with pytest.raises(ZapoptError, match="no sensitivity"):
        divergence_curves(curves, {})
    with pytest.raises(ZapoptError, match="increasing"):
        LayerSensitivity("x", (0.1, 0.2), (0.02, 0.01), (1.0, 2.0))


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


def test_reused_probes_must_come_from_the_same_curves_and_images() -> None:
    curves = {n: _log_curve(n, np.geomspace(1e-4, 0.3, 40)) for n in ("a", "b")}
    found = layer_sensitivities(curves, _power_law_probe(curves, {"a": 1, "b": 2}, {"a": 1, "b": 1}, []))
    reference = np.random.default_rng(0).standard_normal((50, 10))
    probes = SensitivityProbes.measured_on(found, reference)
    probes.check(curves, reference + 1e-7)  # their own curves and images pass (float noise allowed)
    with pytest.raises(ZapoptError, match="missing: b"):
        SensitivityProbes.measured_on({"a": found["a"]}, reference).check(curves, reference)
    with pytest.raises(ZapoptError, match="extra: c"):
        SensitivityProbes.measured_on({**found, "c": found["a"]}, reference).check(curves, reference)
    other = {n: _log_curve(n, np.geomspace(2e-4, 0.4, 40)) for n in ("a", "b")}  # same taus, other errors
    with pytest.raises(ZapoptError, match="not a point of its curve"):
        probes.check(other, reference)
    shifted = {"a": found["a"], "b": LayerSensitivity("b", (9.99,), (found["b"].errors[0],), (1e-3,))}
    with pytest.raises(ZapoptError, match="threshold 9.99 is not a point"):
        SensitivityProbes.measured_on(shifted, reference).check(curves, reference)
    # fewer images, reordered, other preprocessing, other classes with the same scores
    for images in (reference[:40], reference[::-1], reference * 1.01, reference[:, ::-1]):
        with pytest.raises(ZapoptError, match="other --eval images"):
            probes.check(curves, images)
    for bad in (np.zeros((0, 10)), np.zeros(10)):
        with pytest.raises(ZapoptError, match=r"\[N, K\] class scores"):
            SensitivityProbes.measured_on(found, bad)


def test_probes_on_a_merged_curve_name_each_probes_pattern() -> None:
    """On curves of several patterns a probe is a (pattern, threshold) option: the probe
    run gets the pattern, the probe records it, and reuse checks it."""
    from zapopt.pattern_choice import merge_curves

    checker = _log_curve("a", np.geomspace(1e-4, 0.3, 40))
    diag = _log_curve("a", np.geomspace(3e-4, 0.9, 40))  # the same taus, other errors
    curves = merge_curves({"checkerboard": {"a": checker}, "diag3x3-33": {"a": diag}})
    runs: list = []

    def divergence_of(thresholds: dict[str, float], patterns: dict[str, str]) -> float:
        runs.append(patterns)
        ((name, tau),) = thresholds.items()
        own = checker if patterns[name] == "checkerboard" else diag
        return float(own.error[own.index_of(tau)])

    found = layer_sensitivities(curves, divergence_of)["a"]
    assert len(found.patterns) == len(found.taus) == len(runs) and set(found.patterns) <= {"checkerboard", "diag3x3-33"}
    assert [r["a"] for r in runs] == list(found.patterns)
    assert found.divergences == pytest.approx(found.errors)  # each probe ran its own pattern's point
    assert found.to_dict()["patterns"] == list(found.patterns)
    reference = np.random.default_rng(0).standard_normal((20, 10))
    SensitivityProbes.measured_on({"a": found}, reference).check(curves, reference)
    flipped = tuple("diag3x3-33" if p == "checkerboard" else "checkerboard" for p in found.patterns)
    other = LayerSensitivity("a", found.taus, found.errors, found.divergences, flipped)
    with pytest.raises(ZapoptError, match="not a point of its curve"):
        SensitivityProbes.measured_on({"a": other}, reference).check(curves, reference)
