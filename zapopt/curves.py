"""Per-layer accuracy/savings curves of trained predictors: the input of threshold selection.

One threshold ``tau`` per layer moves it along a curve: a higher ``tau`` predicts more
zeros (fewer MACs) and loses more activation mass (error). This module measures those
curves on calibration (or held-out) ofms; :mod:`zapopt.thresholds` picks from them.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from zapopt.errors import ZapoptError
from zapopt.ops.spec import PREDICTOR_MACS_PER_ACTIVATION
from zapopt.predictor.inputs import PredictorInput

__all__ = [
    "DEFAULT_TILES",
    "LayerCurve",
    "ScoredPredictor",
    "compute_curves",
    "default_taus",
    "json_float",
    "layer_curve",
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


def _strictly_increasing(values: np.ndarray) -> bool:
    """A non-empty 1-D list of numbers, each larger than the one before."""
    return bool(values.ndim == 1 and values.size > 0 and not np.isnan(values).any() and np.all(np.diff(values) > 0))


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

    ``patterns`` names each point's pattern on a curve that joins several patterns'
    curves (:func:`zapopt.pattern_choice.merge_curves`): a point is then the option
    (pattern, threshold), and thresholds increase within each pattern only. Empty on one
    pattern's own curve.
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
    patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        taus = np.asarray(self.taus, dtype=np.float64)
        object.__setattr__(self, "taus", taus)
        object.__setattr__(self, "patterns", tuple(self.patterns))
        if self.patterns and taus.shape != (len(self.patterns),):
            raise ZapoptError(f"curve {self.name!r}: {len(self.patterns)} patterns for {taus.size} thresholds")
        # One pattern's thresholds increase; on a curve of several patterns, each one's do.
        runs = [taus[self._points_of(p)] for p in dict.fromkeys(self.patterns)] if self.patterns else [taus]
        if not all(_strictly_increasing(run) for run in runs):
            raise ZapoptError("curve thresholds must be a non-empty, strictly increasing list"
                              + (" per pattern" if self.patterns else ""))
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

    def _points_of(self, pattern: str | None) -> np.ndarray:
        """Which points are ``pattern``'s (every point on one pattern's own curve)."""
        if not self.patterns:
            return np.ones(self.taus.shape, dtype=bool)
        return np.array([p == pattern for p in self.patterns], dtype=bool)

    def index_of(self, tau: float, pattern: str | None = None) -> int | None:
        """Where threshold ``tau`` lies on this curve (None if it was not measured); on a
        curve of several patterns, ``tau`` of ``pattern``."""
        hits = np.flatnonzero((self.taus == tau) & self._points_of(pattern))
        return int(hits[0]) if hits.size else None

    def pattern_at(self, index: int) -> str | None:
        """The pattern of point ``index`` (None on one pattern's own curve)."""
        return self.patterns[index] if self.patterns else None

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
            **({"patterns": list(self.patterns)} if self.patterns else {}),
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
                patterns=tuple(str(p) for p in data.get("patterns", ())),
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
    if not _strictly_increasing(grid):
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
