"""Threshold selection: one threshold per layer, picked from its measured curve.

Three ways, each a function of the curves (:mod:`zapopt.curves`):

- :func:`uniform`: one ``tau`` everywhere (the paper's sweep);
- :func:`error_budget`: the paper's per-layer optimization, most MAC savings with the sum
  of layer errors <= E (exact Pareto-frontier dynamic programming over measured points);
- :func:`accuracy_target`: most savings whose *measured* top-1 drop stays <= X %, by
  a bracketed search over E with a caller-supplied evaluation of the rewritten model,
  picking from a monotone fit of the measured drops so one lucky draw cannot win.

Threshold ``-inf`` in a selection means "leave this layer as the original conv": it saves
nothing and costs nothing (no predictor), so it is every layer's fallback option.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from zapopt.curves import LayerCurve, json_float
from zapopt.errors import ZapoptError

__all__ = [
    "AccuracyTargetResult",
    "Evaluation",
    "Selection",
    "accuracy_target",
    "choice_key",
    "error_budget",
    "monotone_fit",
    "uniform",
]


@dataclass(frozen=True)
class Selection:
    """Chosen per-layer thresholds and what the curves predict for them.

    ``macs_before``/``macs_after`` sum over the selected layers only (per image);
    ``error`` is the sum of their calibration errors. ``patterns``: each rewritten layer's
    pattern when its curve joins several patterns' (empty otherwise).
    """

    thresholds: Mapping[str, float]
    macs_before: float
    macs_after: float
    error: float
    patterns: Mapping[str, str] = field(default_factory=dict)

    @property
    def savings(self) -> float:
        """Fraction of the ZAP layers' MACs saved (the whole model's share is smaller)."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before > 0 else 0.0

    @property
    def key(self) -> tuple[tuple, tuple]:
        """What identifies the rewrite this selection makes (see :func:`choice_key`)."""
        return choice_key(self.thresholds, self.patterns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": {k: json_float(v) for k, v in self.thresholds.items()},
            "macs_before": float(self.macs_before),
            "macs_after": float(self.macs_after),
            "savings": float(self.savings),
            "error": float(self.error),
            **({"patterns": dict(self.patterns)} if self.patterns else {}),
        }


def choice_key(thresholds: Mapping[str, float], patterns: Mapping[str, str]) -> tuple[tuple, tuple]:
    """A hashable, order-free key for one rewrite: per-layer thresholds and patterns."""
    return tuple(sorted(thresholds.items())), tuple(sorted(patterns.items()))


#: The point index that stands for "leave the layer as the original conv" (threshold -inf).
_ORIGINAL = -1


def _options(curve: LayerCurve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(curve points, errors, MACs saved)`` of a layer's options: option 0 is
    ``_ORIGINAL``, the others are the curve's points with a finite threshold."""
    finite = np.flatnonzero(np.isfinite(curve.taus))
    points = np.concatenate([[_ORIGINAL], finite])
    errors = np.concatenate([[0.0], curve.error[finite]])
    saved = np.concatenate([[0.0], curve.macs - curve.macs_after[finite]])
    return points, errors, saved


def _at_points(curves: Mapping[str, LayerCurve], points: Mapping[str, int]) -> Selection:
    """The selection that takes point ``points[name]`` of each layer's curve (its threshold,
    and its pattern on a curve of several), or ``_ORIGINAL``."""
    before = after = error = 0.0
    thresholds: dict[str, float] = {}
    patterns: dict[str, str] = {}
    for name, curve in curves.items():
        index = points[name]
        before += curve.macs
        if index == _ORIGINAL:
            thresholds[name] = -math.inf
            after += curve.macs
            continue
        thresholds[name] = float(curve.taus[index])
        pattern = curve.pattern_at(index)
        if pattern is not None:
            patterns[name] = pattern
        after += float(curve.macs_after[index])
        error += float(curve.error[index])
    return Selection(thresholds, before, after, error, patterns)


def _summarize(curves: Mapping[str, LayerCurve], thresholds: Mapping[str, float]) -> Selection:
    """The selection of given thresholds, each a measured point of its curve or ``-inf``."""
    points = {}
    for name, curve in curves.items():
        tau = thresholds[name]
        index = _ORIGINAL if tau == -np.inf else curve.index_of(tau)
        if index is None:
            raise ZapoptError(
                f"threshold {tau} for layer {name!r} was not measured; choose one of its curve's thresholds"
            )
        points[name] = index
    return _at_points(curves, points)


def _check_curves(curves: Mapping[str, LayerCurve]) -> None:
    if not curves:
        raise ZapoptError("no layer curves to select thresholds from")


def uniform(curves: Mapping[str, LayerCurve], tau: float) -> Selection:
    """The same threshold for every layer (it must be on every curve, or ``-inf``)."""
    _check_curves(curves)
    return _summarize(curves, {name: float(tau) for name in curves})


#: Frontier size above which error_budget merges near-equal errors (conservatively).
_FRONTIER_CAP = 20000


def error_budget(curves: Mapping[str, LayerCurve], max_error: float) -> Selection:
    """Most total MAC savings with ``sum(layer errors) <= max_error``, over measured points.

    Multiple-choice knapsack solved by merging per-layer Pareto frontiers (error up,
    savings up) layer by layer: exact as long as the frontier stays under 20,000 points;
    beyond that, points are bucketed by error (rounded up, so the result stays within the
    budget) and only the best of each bucket survives.
    """
    _check_curves(curves)
    if not max_error >= 0:
        raise ZapoptError(f"the error budget must be >= 0, got {max_error}")
    limit = max_error * (1 + 1e-12) + 1e-15
    names = list(curves)
    err = np.zeros(1)
    sav = np.zeros(1)
    parents: list[tuple[np.ndarray, np.ndarray]] = []
    layer_points = []
    for name in names:
        points, errors, saved = _options(curves[name])
        layer_points.append(points)
        cand_err = (err[:, None] + errors[None, :]).ravel()
        cand_sav = (sav[:, None] + saved[None, :]).ravel()
        keep = np.flatnonzero(cand_err <= limit)
        if keep.size > _FRONTIER_CAP:
            width = limit / _FRONTIER_CAP
            bucket = np.ceil(cand_err[keep] / width) if width > 0 else np.zeros(keep.size)
            order = np.lexsort((-cand_sav[keep], bucket))
            first = np.ones(order.size, dtype=bool)
            first[1:] = bucket[order][1:] != bucket[order][:-1]
            keep = keep[order[first]]
        order = keep[np.lexsort((-cand_sav[keep], cand_err[keep]))]
        best_before = np.maximum.accumulate(np.concatenate([[-np.inf], cand_sav[order][:-1]]))
        order = order[cand_sav[order] > best_before]
        n_options = points.size
        parents.append((order // n_options, order % n_options))
        err, sav = cand_err[order], cand_sav[order]
    best = int(np.argmax(sav))  # the frontier is sorted by error; savings increase along it
    choices = [0] * len(names)
    index = best
    for layer in range(len(names) - 1, -1, -1):
        parent, choice = parents[layer]
        choices[layer] = int(choice[index])
        index = int(parent[index])
    return _at_points(curves, {name: int(layer_points[i][choices[i]]) for i, name in enumerate(names)})


@dataclass(frozen=True)
class Evaluation:
    """One measured point of :func:`accuracy_target`."""

    budget: float
    selection: Selection
    drop: float
    feasible: bool
    #: The drop on the non-decreasing fit over every measured budget (set on the result).
    monotone_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"budget": float(self.budget), "drop": float(self.drop), "feasible": self.feasible,
                "monotone_drop": self.monotone_drop, **self.selection.to_dict()}


@dataclass(frozen=True)
class AccuracyTargetResult:
    """The chosen selection, its measured drop, and every evaluation made to find it.

    ``drop`` is ``None`` only when no evaluated point met the target and the original
    model (every threshold ``-inf``) was returned without measuring it.
    """

    selection: Selection
    drop: float | None
    evaluations: tuple[Evaluation, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "selection": self.selection.to_dict(),
            "drop": self.drop,
            "evaluations": [e.to_dict() for e in self.evaluations],
            "seconds": self.seconds,
        }


def monotone_fit(values: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit of ``values`` (pool adjacent violators).

    Along the :func:`error_budget` frontier a larger budget never saves less and should
    never cost less accuracy; a measured drop that falls as the budget grows is
    sampling noise of the evaluation set, and pooling it with its neighbours averages
    that noise out instead of rewarding it.
    """
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value in values:
        blocks.append([float(value), 1.0, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, weight, count = blocks.pop()
            previous = blocks[-1]
            total = previous[1] + weight
            previous[0] = (previous[0] * previous[1] + mean * weight) / total
            previous[1], previous[2] = total, previous[2] + count
    return [mean for mean, _, count in blocks for _ in range(count)]


def _pick_monotone(evaluations: Sequence[Evaluation], max_drop: float) -> tuple[list[Evaluation], Evaluation | None]:
    """Every evaluation with its ``monotone_drop``, and the most saving one whose measured
    *and* fitted drops are both within ``max_drop``. The original model (drop 0 by
    definition) anchors the fit; repeated budgets are fitted once."""
    by_budget = {e.budget: e for e in evaluations}
    budgets = sorted(by_budget)
    fit_of = dict(zip(budgets, monotone_fit([0.0] + [by_budget[b].drop for b in budgets])[1:]))
    annotated = [replace(e, monotone_drop=float(fit_of[e.budget])) for e in evaluations]
    candidates = [e for e in annotated if e.feasible and e.monotone_drop <= max_drop]
    return annotated, max(candidates, key=lambda e: e.selection.savings, default=None)


def _next_budget(low: float, low_drop: float, high: float, high_drop: float, max_drop: float,
                 floor: float) -> float | None:
    """Where the measured drop should cross ``max_drop`` between two bracketing budgets.

    The drop grows about linearly with the summed error budget over a bracket, so the
    crossing is interpolated (regula falsi), kept 10 %-90 % of the way into the bracket
    so noisy drops cannot stall it at one end (the bracket shrinks by 10 % or more per
    step, and by up to 10x while the fitting end is still budget 0). ``floor`` (the
    smallest error any layer makes) is the least budget worth measuring; None when the
    bracket is already below it.
    """
    if high <= floor:
        return None
    slope = (high_drop - low_drop) / (high - low)
    guess = low + (max_drop - low_drop) / slope if slope > 0 else 0.5 * (low + high)
    width = high - low
    return float(max(floor, min(max(guess, low + 0.1 * width), high - 0.1 * width)))


def accuracy_target(
    curves: Mapping[str, LayerCurve],
    max_drop: float,
    evaluate: Callable[[dict[str, float], dict[str, str]], float],
    *,
    max_evaluations: int = 10,
    relative_tolerance: float = 0.05,
) -> AccuracyTargetResult:
    """Most savings whose measured accuracy drop (``evaluate``'s return, in %) is <= ``max_drop``.

    ``evaluate(thresholds, patterns)`` runs the model rewritten with those thresholds (and,
    on curves of several patterns, each rewritten layer's pattern; else ``{}``) on held-out
    data and returns the top-1 drop in % (labels) or the top-1 disagreement with the
    original in % (no labels). The search walks the :func:`error_budget` frontier: it
    tries the largest useful budget first, then narrows a bracket (a budget that fits,
    at first budget 0, and one that does not) by interpolating where the measured drop
    reaches ``max_drop`` (:func:`_next_budget`). The answer is the most saving point
    whose measured drop *and* whose drop on a non-decreasing fit over all measured points
    (:func:`monotone_fit`) meet the target: on a few thousand images a drop is only known
    to about +-0.2 points, and taking the best raw point would pick the luckiest draw.
    A budget whose thresholds (and patterns) were already measured is not re-measured.
    """
    _check_curves(curves)
    if not (isinstance(max_drop, (int, float)) and max_drop >= 0):
        raise ZapoptError(f"the accuracy drop limit must be a number >= 0 (percent), got {max_drop!r}")
    if max_evaluations < 1:
        raise ZapoptError(f"max_evaluations must be >= 1, got {max_evaluations}")
    started = time.perf_counter()
    measured: dict[tuple[tuple, tuple], float] = {}
    evaluations: list[Evaluation] = []

    def measure(budget: float) -> Evaluation | None:
        selection = error_budget(curves, budget)
        key = selection.key
        if key in measured:
            drop = measured[key]
        elif len(measured) >= max_evaluations:
            return None
        else:
            drop = float(evaluate(dict(selection.thresholds), dict(selection.patterns)))
            if math.isnan(drop):
                raise ZapoptError("the accuracy evaluation returned NaN")
            measured[key] = drop
        record = Evaluation(budget, selection, drop, drop <= max_drop)
        evaluations.append(record)
        return record

    positive = np.concatenate([c.error[c.error > 0] for c in curves.values()])
    if positive.size:
        high = float(sum(c.error.max() for c in curves.values()))
        top = measure(high)
        if top is not None and not top.feasible:
            # Invariant: ``low`` fits (measured, or budget 0 = the original model), ``high`` does not.
            low, low_drop, high_drop = 0.0, 0.0, top.drop
            floor = float(positive.min())
            for _ in range(4 * max_evaluations):
                if len(measured) >= max_evaluations or (low > 0 and high / low <= 1 + relative_tolerance):
                    break
                budget = _next_budget(low, low_drop, high, high_drop, max_drop, floor)
                if budget is None:
                    break
                record = measure(budget)
                if record is None:
                    break
                if record.feasible:
                    low, low_drop = budget, record.drop
                else:
                    high, high_drop = budget, record.drop
    annotated, best = _pick_monotone(evaluations, max_drop)
    if best is None:
        measure(0.0)
        annotated, best = _pick_monotone(evaluations, max_drop)
    if best is None:
        original = _summarize(curves, {name: -math.inf for name in curves})
        return AccuracyTargetResult(original, None, tuple(annotated), time.perf_counter() - started)
    return AccuracyTargetResult(best.selection, best.drop, tuple(annotated), time.perf_counter() - started)
