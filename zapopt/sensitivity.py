"""How much a layer's lost activation mass moves the model's output, for ``--max-drop``.

The error budget (``thresholds.error_budget``) charges a unit of activation mass lost the
same in every layer and at every size, but neither holds: on the reference VGG-style
model, losing 1 % of a layer's mass moved the output by 1.3-3.4e-4 nats depending on the
layer, and 10 % moved it 3 to 56 times as much as 1 % did, again depending on the
layer, which one weight per layer cannot express. So each layer is
probed at several points of its curve (``PROBE_ERRORS``): only that layer is rewritten,
at the threshold whose calibration error is nearest the probe's, and the output's mean KL
divergence from the original's is measured on held-out images. Between probes the
divergence is interpolated in log-log space, outside them extrapolated as a power law
(never flatter than linear), and the budget search then runs over each layer's
*estimated divergence* instead of its error: for independent small perturbations the
logit changes add in quadrature, so their divergences add, and the top-1 drop grows with
their sum. On the VGG (checkerboard, five predictor seeds, thresholds searched on the
full test set) this raised the savings at <= 0.5 % top-1 drop from 20.7 % on average with
one linear weight per layer (probed at 2 % error) to 21.9 %.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from zapopt.curves import LayerCurve
from zapopt.errors import ZapoptError

__all__ = ["PROBE_ERRORS", "LayerSensitivity", "SensitivityProbes", "budgets_divergence", "divergence_curves",
           "layer_sensitivities", "output_divergence", "probe_index"]

#: Calibration errors (share of the layer's activation mass lost) each layer is probed at.
PROBE_ERRORS: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
#: A layer's estimated divergence is never taken below this share of the median layer's at
#: the same error (a probe on a thousand images can measure ~0 for a layer that does
#: matter a little, and a zero-cost layer would soak up the whole budget).
DIVERGENCE_FLOOR = 0.1
#: Where a layer's sensitivity is summarised for the report (1 % of its mass lost).
SUMMARY_ERROR = 0.01
#: The smallest divergence a probe is taken to have measured (keeps the logs finite).
_TINY = 1e-12


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's probes: thresholds, calibration errors and measured output divergences
    (nats), in increasing error; empty when the curve has no lossy point to probe.
    ``patterns``: each probe's pattern when the curve joins several (empty otherwise)."""

    name: str
    taus: tuple[float, ...]
    errors: tuple[float, ...]
    divergences: tuple[float, ...]
    patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.taus) == len(self.errors) == len(self.divergences):
            raise ZapoptError(f"layer {self.name!r}: probes need as many thresholds, errors and divergences")
        if self.patterns and len(self.patterns) != len(self.taus):
            raise ZapoptError(f"layer {self.name!r}: probes need a pattern per threshold or none")
        if any(e <= 0 for e in self.errors) or any(b <= a for a, b in zip(self.errors, self.errors[1:])):
            raise ZapoptError(f"layer {self.name!r}: probe errors must be positive and increasing")

    @property
    def probed(self) -> bool:
        return bool(self.errors)

    def raw_divergence_at(self, error: np.ndarray) -> np.ndarray:
        """Divergence estimated from this layer's probes alone (0 where the error is 0).

        Log-log interpolation between probes; outside them a power law with the slope of
        the nearest two probes, never below 1 (losing more mass never hurts less than in
        proportion).
        """
        error = np.asarray(error, dtype=np.float64)
        if not self.probed:
            raise ZapoptError(f"layer {self.name!r} has no probes to estimate a divergence from")
        log_e = np.log(np.asarray(self.errors))
        log_d = np.log(np.maximum.accumulate(np.maximum(np.asarray(self.divergences), _TINY)))
        out = np.zeros_like(error)
        lossy = error > 0
        x = np.log(error[lossy])
        low_slope = high_slope = 1.0  # one probe: proportional to the error
        if log_e.size > 1:
            low_slope = max((log_d[1] - log_d[0]) / (log_e[1] - log_e[0]), 1.0)
            high_slope = max((log_d[-1] - log_d[-2]) / (log_e[-1] - log_e[-2]), 1.0)
        y = np.interp(x, log_e, log_d)
        y = np.where(x < log_e[0], log_d[0] + low_slope * (x - log_e[0]), y)
        y = np.where(x > log_e[-1], log_d[-1] + high_slope * (x - log_e[-1]), y)
        out[lossy] = np.exp(y)
        return out

    def to_dict(self) -> dict[str, Any]:
        summary = float(self.raw_divergence_at(np.array([SUMMARY_ERROR]))[0]) if self.probed else None
        return {"name": self.name, "taus": list(self.taus), "errors": list(self.errors),
                "divergences": list(self.divergences), "divergence_at_1pct_error": summary,
                **({"patterns": list(self.patterns)} if self.patterns else {})}


def output_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(candidate)) over rows of class scores [N, K]."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[0] == 0:
        raise ZapoptError(f"output divergence needs two equal [N, K] score arrays, got {ref.shape} and {cand.shape}")
    log_p = ref - ref.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    log_q = cand - cand.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def probe_index(curve: LayerCurve, probe_error: float) -> int | None:
    """Index of the curve point with a positive error closest to ``probe_error`` (None if none)."""
    lossy = np.flatnonzero(curve.error > 0)
    if lossy.size == 0:
        return None
    return int(lossy[np.argmin(np.abs(np.log(curve.error[lossy] / probe_error)))])


def layer_sensitivities(
    curves: Mapping[str, LayerCurve],
    divergence_of: Callable[[dict[str, float], dict[str, str]], float],
    *,
    probe_errors: Sequence[float] = PROBE_ERRORS,
) -> dict[str, LayerSensitivity]:
    """Probe every layer alone at the curve points nearest ``probe_errors``.

    ``divergence_of({layer: tau}, patterns)`` runs the model with only that layer rewritten
    (``patterns``: ``{layer: pattern}`` on a curve of several patterns, else ``{}``) and
    returns its output divergence from the original (e.g. :func:`output_divergence`).
    Probes that land on the same curve point are run once.
    """
    if not curves:
        raise ZapoptError("no layers to measure sensitivities for")
    if not probe_errors or any(not 0 < e < 1 for e in probe_errors):
        raise ZapoptError(f"probe errors must be in (0, 1), got {list(probe_errors)}")
    found = {}
    for name, curve in curves.items():
        indices = sorted({i for e in probe_errors if (i := probe_index(curve, e)) is not None},
                         key=lambda i: curve.error[i])
        taus, errors, divergences, patterns = [], [], [], []
        for index in indices:  # distinct errors: equal ones share probe_index's (first) index
            tau, pattern = float(curve.taus[index]), curve.pattern_at(index)
            divergence = float(divergence_of({name: tau}, {} if pattern is None else {name: pattern}))
            if math.isnan(divergence) or divergence < -1e-9:
                raise ZapoptError(f"layer {name!r}: the output divergence is {divergence}")
            taus.append(tau)
            errors.append(float(curve.error[index]))
            divergences.append(max(divergence, 0.0))
            if pattern is not None:
                patterns.append(pattern)
        found[name] = LayerSensitivity(name, tuple(taus), tuple(errors), tuple(divergences), tuple(patterns))
    return found


_REUSE_HINT = "reuse the probes of a choice made on the same prepared layers and eval data"


def _class_scores(reference: np.ndarray) -> np.ndarray:
    scores = np.asarray(reference, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ZapoptError(f"probe images need [N, K] class scores with N, K >= 1, got shape {scores.shape}")
    return scores


@dataclass(frozen=True, eq=False)
class SensitivityProbes:
    """Every layer's probes and which images they ran on, so another search (e.g. for
    another --max-drop target) can reuse them, but only on the same layers and data.

    The images are recorded as the original model's top-1 class and score on each one;
    different data (other images, order, preprocessing) changes them.
    """

    layers: Mapping[str, LayerSensitivity]
    reference_top1: np.ndarray  # [n] int
    reference_score: np.ndarray  # [n] float

    @classmethod
    def measured_on(cls, layers: Mapping[str, LayerSensitivity], reference: np.ndarray) -> SensitivityProbes:
        """``layers`` probed on images whose original class scores are ``reference`` [n, K]."""
        scores = _class_scores(reference)
        return cls(dict(layers), scores.argmax(1), scores.max(1))

    def check(self, curves: Mapping[str, LayerCurve], reference: np.ndarray) -> None:
        """Refuse probes measured on other curves (other layers, predictors or patterns)
        or on other images than those whose original class scores are ``reference``."""
        names, probed = set(curves), set(self.layers)
        if names != probed:
            raise ZapoptError(
                "the sensitivity probes are for other layers (missing: "
                f"{', '.join(sorted(names - probed)) or '-'}; extra: {', '.join(sorted(probed - names)) or '-'}); "
                f"{_REUSE_HINT}")
        for name, sensitivity in self.layers.items():
            curve = curves[name]
            patterns = sensitivity.patterns or (None,) * len(sensitivity.taus)
            for tau, error, pattern in zip(sensitivity.taus, sensitivity.errors, patterns):
                index = curve.index_of(tau, pattern)
                if index is None or not math.isclose(float(curve.error[index]), error, rel_tol=1e-9, abs_tol=1e-15):
                    raise ZapoptError(f"layer {name!r}: the probe at threshold {tau} is not a point of its curve; "
                                      f"{_REUSE_HINT}")
        scores = _class_scores(reference)
        top = scores.max(1)
        if (len(scores) != len(self.reference_top1) or not np.array_equal(scores.argmax(1), self.reference_top1)
                or not np.allclose(top, self.reference_score, rtol=1e-4, atol=1e-5 * (1 + np.abs(top).max()))):
            raise ZapoptError(f"the sensitivity probes were measured on other --eval images; {_REUSE_HINT}")


def _measured(sensitivities: Mapping[str, LayerSensitivity]) -> list[LayerSensitivity]:
    return [s for s in sensitivities.values() if s.probed and max(s.divergences) > 0]


def budgets_divergence(sensitivities: Mapping[str, LayerSensitivity]) -> bool:
    """Whether :func:`divergence_curves` replaces the errors (some probe measured an effect)."""
    return bool(_measured(sensitivities))


def divergence_curves(curves: Mapping[str, LayerCurve],
                      sensitivities: Mapping[str, LayerSensitivity]) -> dict[str, LayerCurve]:
    """The curves with each point's error replaced by its estimated output divergence (for
    the budget search only), floored at ``DIVERGENCE_FLOOR`` x the median probed layer's.

    A layer that could not be probed (no lossy point) keeps its all-zero error; when no
    probe measured any divergence, the curves are returned as they were (plain error budget).
    """
    missing = [name for name in curves if name not in sensitivities]
    if missing:
        raise ZapoptError(f"no sensitivity for layers {', '.join(missing)}")
    probed = _measured(sensitivities)
    if not probed:
        return dict(curves)
    out = {}
    for name, curve in curves.items():
        sensitivity = sensitivities[name]
        if not sensitivity.probed:
            out[name] = curve
            continue
        typical = np.median([s.raw_divergence_at(curve.error) for s in probed], axis=0)
        estimate = np.maximum(sensitivity.raw_divergence_at(curve.error), DIVERGENCE_FLOOR * typical)
        out[name] = replace(curve, error=estimate)
    return out
