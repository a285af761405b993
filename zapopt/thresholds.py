"""Per-layer accuracy/savings curves of trained predictors, and threshold selection.

One threshold ``tau`` per layer moves it along a curve: a higher ``tau`` predicts more
zeros (fewer MACs) and loses more activation mass (error). This module measures those
curves on calibration (or held-out) ofms, then picks thresholds three ways:

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from zapopt.errors import ZapoptError
from zapopt.ops.spec import PREDICTOR_MACS_PER_ACTIVATION
from zapopt.predictor.inputs import PredictorInput

__all__ = [
    "DEFAULT_TILES",
    "PREDICTOR_MACS_PER_ACTIVATION",
    "json_float",
    "AccuracyTargetResult",
    "Evaluation",
    "LayerCurve",
    "Selection",
    "accuracy_target",
    "compute_curves",
    "default_taus",
    "error_budget",
    "layer_curve",
    "uniform",
]

#: Tile granularities (channels, consecutive predicted positions in a row) reported.
DEFAULT_TILES: tuple[tuple[int, int], ...] = ((1, 16), (4, 8), (8, 8), (16, 16))


class ScoredPredictor(Protocol):
    """What curves need from a trained predictor (``TrainedPredictor`` fits)."""

    mask: np.ndarray

    def scores(self, ofm: np.ndarray) -> np.ndarray: ...


def default_taus() -> np.ndarray:
    """``-inf`` (compute everything), -1 ... -0.05 in steps of 0.05, 0 ... 0.99 in steps of
    0.01, then 1 ... 1.5 in steps of 0.05.

    Why beyond [0, 1): a predictor's scores are not probabilities. In deep layers with
    tiny maps, skipping every position scored <= 0 already loses more than a strict budget
    allows, so the small-error end of the curve lies at negative thresholds; a predictor
    trained with the magnitude-weighted loss scores higher, so its large-savings end lies
    near and above 1.
    """
    return np.round(np.concatenate([
        [-np.inf], np.linspace(-1.0, -0.05, 20), np.linspace(0.0, 0.99, 100), np.linspace(1.0, 1.5, 11),
    ]), 6)


def _tile_key(tile: tuple[int, int]) -> str:
    return f"{tile[0]}x{tile[1]}"


def json_float(value: float) -> float | str:
    """Strict JSON has no infinities: write them as the strings ``"inf"``/``"-inf"``."""
    value = float(value)
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _json_floats(values: Iterable[float]) -> list[float | str]:
    return [json_float(v) for v in values]


@dataclass(frozen=True)
class LayerCurve:
    """One layer's measured behaviour at each threshold in ``taus`` (all arrays ``[K]``).

    Shares are of the predicted positions ``T`` over all measured images. MACs are per
    image. ``tile_shares[k][i]`` is the share of the skipped work (predicted-zero
    activations at ``taus[i]``) that lies in whole skippable tiles of granularity ``k``
    (see :func:`layer_curve` for the exact tile definition); ``oracle_tile_shares`` is
    the same for the true zeros in ``T``.
    """

    name: str
    taus: np.ndarray
    shape: tuple[int, int, int]
    images: int
    macs: float
    predictor_macs: float
    pattern_fraction: float
    true_zero_share: float
    predicted_zero: np.ndarray
    false_zero: np.ndarray
    false_nonzero: np.ndarray
    error: np.ndarray
    macs_after: np.ndarray
    oracle_macs_after: float
    tile_shares: Mapping[str, np.ndarray] = field(default_factory=dict)
    oracle_tile_shares: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        taus = np.asarray(self.taus, dtype=np.float64)
        if taus.ndim != 1 or taus.size == 0 or np.isnan(taus).any() or np.any(np.diff(taus) <= 0):
            raise ZapoptError("curve thresholds must be a non-empty, strictly increasing list")
        object.__setattr__(self, "taus", taus)
        for name in ("predicted_zero", "false_zero", "false_nonzero", "error", "macs_after"):
            array = np.asarray(getattr(self, name), dtype=np.float64)
            if array.shape != taus.shape:
                raise ZapoptError(f"curve {self.name!r}: {name} has shape {array.shape}, expected {taus.shape}")
            object.__setattr__(self, name, array)
        object.__setattr__(
            self, "tile_shares", {k: np.asarray(v, dtype=np.float64) for k, v in self.tile_shares.items()}
        )
        if not self.macs > 0:
            raise ZapoptError(f"curve {self.name!r}: the layer's MACs must be positive, got {self.macs}")

    def index_of(self, tau: float) -> int | None:
        """Where threshold ``tau`` lies on this curve (None if it was not measured)."""
        hits = np.flatnonzero(self.taus == tau)
        return int(hits[0]) if hits.size else None

    @property
    def savings(self) -> np.ndarray:
        """Fraction of the layer's MACs saved at each threshold (negative = costs more)."""
        return 1.0 - self.macs_after / self.macs

    @property
    def oracle_savings(self) -> float:
        """Savings of a perfect, free predictor: computes ``S`` and the true nonzeros only."""
        return 1.0 - self.oracle_macs_after / self.macs

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict (infinite thresholds as the strings ``"-inf"``/``"inf"``)."""
        return {
            "name": self.name,
            "taus": _json_floats(self.taus),
            "shape": list(self.shape),
            "images": self.images,
            "macs": float(self.macs),
            "predictor_macs": float(self.predictor_macs),
            "pattern_fraction": float(self.pattern_fraction),
            "true_zero_share": float(self.true_zero_share),
            "predicted_zero": _json_floats(self.predicted_zero),
            "false_zero": _json_floats(self.false_zero),
            "false_nonzero": _json_floats(self.false_nonzero),
            "error": _json_floats(self.error),
            "macs_after": _json_floats(self.macs_after),
            "savings": _json_floats(self.savings),
            "oracle_macs_after": float(self.oracle_macs_after),
            "oracle_savings": float(self.oracle_savings),
            "tile_shares": {k: _json_floats(v) for k, v in self.tile_shares.items()},
            "oracle_tile_shares": {k: float(v) for k, v in self.oracle_tile_shares.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerCurve:
        """Inverse of :meth:`to_dict` (derived keys such as ``savings`` are ignored)."""
        floats = lambda key: np.array([float(v) for v in data[key]])  # noqa: E731
        try:
            return cls(
                name=str(data["name"]),
                taus=floats("taus"),
                shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
                images=int(data["images"]),
                macs=float(data["macs"]),
                predictor_macs=float(data["predictor_macs"]),
                pattern_fraction=float(data["pattern_fraction"]),
                true_zero_share=float(data["true_zero_share"]),
                predicted_zero=floats("predicted_zero"),
                false_zero=floats("false_zero"),
                false_nonzero=floats("false_nonzero"),
                error=floats("error"),
                macs_after=floats("macs_after"),
                oracle_macs_after=float(data["oracle_macs_after"]),
                tile_shares={k: np.array([float(x) for x in v]) for k, v in data.get("tile_shares", {}).items()},
                oracle_tile_shares={k: float(v) for k, v in data.get("oracle_tile_shares", {}).items()},
            )
        except (KeyError, TypeError) as exc:
            raise ZapoptError(f"not a layer curve record: missing or malformed {exc}") from exc


def _row_groups(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rows sharing the same predicted columns: ``[(rows, columns), ...]``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for row in range(mask.shape[0]):
        columns = tuple(np.flatnonzero(~mask[row]).tolist())
        if columns:
            groups.setdefault(columns, []).append(row)
    return [(np.array(rows), np.array(cols)) for cols, rows in groups.items()]


def _tile_reduce(values: np.ndarray, channels: int, positions: int, fill: Any) -> tuple[np.ndarray, np.ndarray]:
    """Max over tiles of ``values [n, C, R, m]`` -> ``([n, C/a, R, m/b], element counts)``."""
    n, c, r, m = values.shape
    pc, pm = -(-c // channels) * channels, -(-m // positions) * positions
    padded = np.full((n, pc, r, pm), fill, dtype=values.dtype)
    padded[:, :c, :, :m] = values
    tiles = padded.reshape(n, pc // channels, channels, r, pm // positions, positions).max(axis=(2, 5))
    real = np.zeros((pc, pm), dtype=np.int64)
    real[:c, :m] = 1
    counts = real.reshape(pc // channels, channels, pm // positions, positions).sum(axis=(1, 3))
    return tiles, np.broadcast_to(counts[None, :, None, :], tiles.shape)


def layer_curve(
    name: str,
    ofm: np.ndarray,
    predictor: ScoredPredictor,
    *,
    macs: float,
    taus: Sequence[float] | np.ndarray | None = None,
    tiles: Sequence[tuple[int, int]] = DEFAULT_TILES,
    batch_size: int = 16,
    max_images: int | None = None,
    predictor_input: PredictorInput | None = None,
) -> LayerCurve:
    """Measure one layer's curve on true ofms ``[N, C, H, W]`` (array or memmap).

    For a predictor that reads the pre-activation, ``ofm`` holds pre-activations and the
    ofm is derived (``predictor_input``, default: the predictor's own attribute of that
    name, else "activation").

    ``macs`` is the layer's conv MACs per image (``M``). At threshold ``tau`` an activation
    in ``T`` is predicted zero iff ``Z <= tau`` (the op computes it iff ``Z > tau``), and

        macs_after = M |S|/(HW) + 18 C H W + M (#predicted-nonzero in T) / (C H W)

    averaged over images. ``error = 1 - sum(y * computed) / sum(y)`` over all images.

    Tiles: a tile of granularity ``(a, b)`` is ``a`` consecutive channels (blocks
    ``[0, a), [a, 2a), ...``) times ``b`` consecutive *predicted* positions of one output
    row: a row's T columns, listed left to right, are cut into groups of ``b`` starting
    at its first T column (pattern columns in between are skipped over, since they are
    computed anyway). The last channel block and a row's last group may be smaller. A
    tile is skippable when all its activations are predicted zero; its tile share is the
    predicted-zero activations inside skippable tiles over all predicted-zero activations.
    """
    if not isinstance(ofm, np.ndarray) or ofm.ndim != 4:
        raise ZapoptError(f"curves need an [N, C, H, W] ofm array, got {getattr(ofm, 'shape', ofm)!r}")
    if batch_size < 1:
        raise ZapoptError(f"batch_size must be positive, got {batch_size}")
    grid = default_taus() if taus is None else np.asarray(taus, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.isnan(grid).any() or np.any(np.diff(grid) <= 0):
        raise ZapoptError("thresholds must be a non-empty, strictly increasing list of numbers")
    for a, b in tiles:
        if a < 1 or b < 1:
            raise ZapoptError(f"tile sizes must be positive, got {(a, b)}")
    images = ofm.shape[0] if max_images is None else min(max_images, ofm.shape[0])
    _, channels, height, width = ofm.shape
    mask = np.asarray(predictor.mask, dtype=bool)
    if mask.shape != (height, width):
        raise ZapoptError(
            f"layer {name!r}: predictor pattern mask {mask.shape} does not fit the ofm {(height, width)}"
        )
    if images == 0:
        raise ZapoptError(f"layer {name!r}: no images to measure a curve on")
    # The op compares float32 scores with float32(threshold): decide exactly that way.
    grid32 = grid.astype(np.float32)
    if np.any(np.diff(grid32) <= 0):
        raise ZapoptError("thresholds must stay strictly increasing when rounded to float32")
    predicted = ~mask
    groups = _row_groups(mask)
    k = grid.size

    pred_zero = np.zeros(k + 1)
    false_zero = np.zeros(k + 1)
    mass_lost = np.zeros(k + 1)
    in_tiles = {_tile_key(t): np.zeros(k + 1) for t in tiles}
    oracle_in_tiles = {_tile_key(t): 0.0 for t in tiles}
    total_mass = 0.0
    zeros_t = 0
    source = predictor_input or getattr(predictor, "predictor_input", None) or PredictorInput()
    for start in range(0, images, batch_size):
        stored = np.asarray(ofm[start : min(start + batch_size, images)], dtype=np.float32)
        if not np.isfinite(stored).all():
            raise ZapoptError(f"layer {name!r}: the ofm contains NaN or Inf")
        y = source.ofm(stored)
        z = np.asarray(predictor.scores(stored), dtype=np.float32)
        y_t, z_t = y[:, :, predicted], z[:, :, predicted]
        bins = np.searchsorted(grid32, z_t.ravel(), side="left")
        nonzero_t = (y_t > 0).ravel()
        pred_zero += np.bincount(bins, minlength=k + 1)
        false_zero += np.bincount(bins, weights=nonzero_t, minlength=k + 1)
        mass_lost += np.bincount(bins, weights=y_t.ravel().astype(np.float64), minlength=k + 1)
        total_mass += float(y.sum(dtype=np.float64))
        zeros_t += int(nonzero_t.size - nonzero_t.sum())
        for rows, cols in groups:
            z_rows = z[:, :, rows][:, :, :, cols]
            nz_rows = y[:, :, rows][:, :, :, cols] > 0
            for tile in tiles:
                key = _tile_key(tile)
                tile_max, counts = _tile_reduce(z_rows, tile[0], tile[1], -np.inf)
                tile_bins = np.searchsorted(grid32, tile_max.ravel(), side="left")
                in_tiles[key] += np.bincount(tile_bins, weights=counts.ravel(), minlength=k + 1)
                any_nonzero, counts = _tile_reduce(nz_rows, tile[0], tile[1], False)
                oracle_in_tiles[key] += float(counts[~any_nonzero].sum())

    # bins[i] = first threshold index with z <= tau: predicted zero at that tau and above.
    pred_zero_c = np.cumsum(pred_zero)[:k]
    false_zero_c = np.cumsum(false_zero)[:k]
    mass_lost_c = np.cumsum(mass_lost)[:k]
    t_count = images * channels * int(predicted.sum())
    all_count = images * channels * height * width
    pattern_fraction = float(mask.sum()) / (height * width)
    predictor_macs = float(PREDICTOR_MACS_PER_ACTIVATION * channels * height * width)
    shares = lambda count: count / t_count if t_count else np.zeros_like(count)  # noqa: E731
    nonzeros_t = t_count - zeros_t
    return LayerCurve(
        name=name,
        taus=grid,
        shape=(channels, height, width),
        images=images,
        macs=float(macs),
        predictor_macs=predictor_macs,
        pattern_fraction=pattern_fraction,
        true_zero_share=zeros_t / t_count if t_count else 0.0,
        predicted_zero=shares(pred_zero_c),
        false_zero=shares(false_zero_c),
        false_nonzero=shares(zeros_t - (pred_zero_c - false_zero_c)),
        error=mass_lost_c / total_mass if total_mass > 0 else np.zeros(k),
        macs_after=macs * pattern_fraction + predictor_macs + macs * (t_count - pred_zero_c) / all_count,
        oracle_macs_after=macs * pattern_fraction + macs * nonzeros_t / all_count,
        tile_shares={
            key: np.divide(np.cumsum(v)[:k], pred_zero_c, out=np.zeros(k), where=pred_zero_c > 0)
            for key, v in in_tiles.items()
        },
        oracle_tile_shares={key: v / zeros_t if zeros_t else 0.0 for key, v in oracle_in_tiles.items()},
    )


def compute_curves(
    store: Any,
    predictors: Mapping[str, ScoredPredictor],
    macs: Mapping[str, float],
    *,
    taus: Sequence[float] | np.ndarray | None = None,
    tiles: Sequence[tuple[int, int]] = DEFAULT_TILES,
    progress: bool | None = None,
) -> dict[str, LayerCurve]:
    """Curves for every layer that has a predictor, from a ``CalibrationStore``."""
    from zapopt.progress import progress_bar

    missing = [name for name in predictors if name not in macs]
    if missing:
        raise ZapoptError(f"no MAC count for layers {', '.join(missing)}")
    curves: dict[str, LayerCurve] = {}
    with progress_bar(len(predictors), "curves", "layer", progress) as bar:
        for name in predictors:
            curves[name] = layer_curve(
                name, store.layer_array(name), predictors[name], macs=macs[name], taus=taus, tiles=tiles
            )
            bar.update(1)
    return curves


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """Chosen per-layer thresholds and what the curves predict for them.

    ``macs_before``/``macs_after`` sum over the selected layers only (per image);
    ``error`` is the sum of their calibration errors.
    """

    thresholds: Mapping[str, float]
    macs_before: float
    macs_after: float
    error: float

    @property
    def savings(self) -> float:
        """Fraction of the ZAP layers' MACs saved (the whole model's share is smaller)."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": {k: json_float(v) for k, v in self.thresholds.items()},
            "macs_before": float(self.macs_before),
            "macs_after": float(self.macs_after),
            "savings": float(self.savings),
            "error": float(self.error),
        }


def _options(curve: LayerCurve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(taus, errors, MACs saved)``; option 0 is ``-inf`` = the original layer."""
    finite = np.isfinite(curve.taus)
    taus = np.concatenate([[-np.inf], curve.taus[finite]])
    errors = np.concatenate([[0.0], curve.error[finite]])
    saved = np.concatenate([[0.0], curve.macs - curve.macs_after[finite]])
    return taus, errors, saved


def _summarize(curves: Mapping[str, LayerCurve], thresholds: Mapping[str, float]) -> Selection:
    before = after = error = 0.0
    for name, curve in curves.items():
        tau = thresholds[name]
        before += curve.macs
        if tau == -np.inf:
            after += curve.macs
            continue
        index = curve.index_of(tau)
        if index is None:
            raise ZapoptError(
                f"threshold {tau} for layer {name!r} was not measured; choose one of its curve's thresholds"
            )
        after += float(curve.macs_after[index])
        error += float(curve.error[index])
    return Selection(dict(thresholds), before, after, error)


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
    layer_taus = []
    for name in names:
        taus, errors, saved = _options(curves[name])
        layer_taus.append(taus)
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
        n_options = taus.size
        parents.append((order // n_options, order % n_options))
        err, sav = cand_err[order], cand_sav[order]
    best = int(np.argmax(sav))  # the frontier is sorted by error; savings increase along it
    choices = [0] * len(names)
    index = best
    for layer in range(len(names) - 1, -1, -1):
        parent, choice = parents[layer]
        choices[layer] = int(choice[index])
        index = int(parent[index])
    thresholds = {name: float(layer_taus[i][choices[i]]) for i, name in enumerate(names)}
    return _summarize(curves, thresholds)


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
    evaluate: Callable[[dict[str, float]], float],
    *,
    max_evaluations: int = 10,
    relative_tolerance: float = 0.05,
) -> AccuracyTargetResult:
    """Most savings whose measured accuracy drop (``evaluate``'s return, in %) is <= ``max_drop``.

    ``evaluate(thresholds)`` runs the model rewritten with those thresholds on held-out
    data and returns the top-1 drop in % (labels) or the top-1 disagreement with the
    original in % (no labels). The search walks the :func:`error_budget` frontier: it
    tries the largest useful budget first, then narrows a bracket (a budget that fits,
    at first budget 0, and one that does not) by interpolating where the measured drop
    reaches ``max_drop`` (:func:`_next_budget`). The answer is the most saving point
    whose measured drop *and* whose drop on a non-decreasing fit over all measured points
    (:func:`monotone_fit`) meet the target: on a few thousand images a drop is only known
    to about +-0.2 points, and taking the best raw point would pick the luckiest draw.
    A budget whose thresholds were already measured is not re-measured.
    """
    _check_curves(curves)
    if not (isinstance(max_drop, (int, float)) and max_drop >= 0):
        raise ZapoptError(f"the accuracy drop limit must be a number >= 0 (percent), got {max_drop!r}")
    if max_evaluations < 1:
        raise ZapoptError(f"max_evaluations must be >= 1, got {max_evaluations}")
    started = time.perf_counter()
    measured: dict[tuple[tuple[str, float], ...], float] = {}
    evaluations: list[Evaluation] = []

    def measure(budget: float) -> Evaluation | None:
        selection = error_budget(curves, budget)
        key = tuple(sorted(selection.thresholds.items()))
        if key in measured:
            drop = measured[key]
        elif len(measured) >= max_evaluations:
            return None
        else:
            drop = float(evaluate(dict(selection.thresholds)))
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
