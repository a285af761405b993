"""Train with neural gradients rounded to a low-precision floating-point format.

Why per-layer scaling: a layer's gradients span a few octaves around 2^mu2, and mu2 drifts
by tens of octaves between layers and during training. Multiplying by 2^round(c - mu2)
before rounding (undone after, exactly: a power of two), with c = ``fmt.log2_centre`` the
middle of the format's normal exponent range, centres every layer in the format's range,
so a narrow format spends its exponent range on the actual data instead of underflowing
it to zero. This is the paper's 2^-round(mu2) plus a fixed per-format shift (c = 1.5 for
default-bias saturating formats, 1 for E5M2), which ``best_format`` assumes too.
``scaling="max"`` (beyond the paper, the usual FP8 "amax" recipe) instead maps the
largest |g| just under max_normal: the few largest entries dominate a weight gradient's
sum, and mean-centring saturates them for wide layers (see docs/gradtools_fp.md).

Why a per-layer format: with the spread sigma2 (std of log2|g|) measured, ``best_format``
picks the exponent/mantissa split that minimizes the expected relative error for that
spread (wide layers need range, narrow ones precision).

``placement="weighted-max"`` / ``"weighted-mean"`` keep one power-of-two scale per layer
from its log2|g| statistics but fit where it puts the distribution instead of fixing
the mean at c: at each refresh, ``weighted_scale_exponent`` picks the power of two that
minimizes the |g|-weighted error sum|q - g| / sum|g| of the layer's measured gradient.
Between refreshes the fitted placement follows the gradient through a per-call
statistic: as an offset from the amax exponent ("weighted-max", recommended) or as the
target the per-call mean log2|g| is moved to ("weighted-mean", the paper's mean
tracking). Why that criterion: the layer consumes g linearly (weight gradient sum g*x,
input gradient conv_transpose(g, W)), so by the triangle inequality their error is
bounded by sum|q - g| times the largest multiplicand, while the relative error behind c
counts a clipped giant like an underflowed dwarf. Why fitted on the data and not on the
lognormal: the |g|-weighted optimum depends on the top tail of log2|g|, and on measured
conv gradients that tail stops at 1.6-3.4 sigma2 above the mean where a lognormal of
10^5-10^6 entries reaches about 4.8 sigma2, so the model's optimum leaves octaves of the
range unused. Why anchored at the max: the fitted optimum sat at the amax placement or
one octave above it on every layer and step measured, while max - mean of log2|g| grew
by about 3 octaves in the first 40 steps, so a target carried by the mean went stale
between refreshes and clipped the top again (docs/gradtools_fp.md,
benchmarks/gradfp_placement.py).

Composition with ``GradientPruner``: transforms attached to the same module run in attach
order, so create the pruner FIRST (prune, then quantize). That order is right because
(1) the pruner's threshold and its keep-probability |g|/tau must see the exact gradient
to stay unbiased, and (2) the last transform decides what the layer's backward actually
consumes: quantizing last puts the survivors (and the +-tau entries the pruner writes,
which are not on any format's grid) on the format's grid, while the lower tail the pruner
removed no longer widens the measured spread, so the chosen format gets more mantissa.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import nn

from gradtools._hooks import DEFAULT_LAYER_TYPES, ModuleFilter, attach_output_grad_transform, select_modules
from gradtools.fp import FPFormat, Rounding, best_format, check_bits, quantize_fp_unchecked

__all__ = ["GradientQuantizer", "QuantizerConfig", "QuantLayerStats", "log2_moments", "log2_mean", "max_scale_exponent",
           "weighted_scale_exponent"]

Scaling = Literal["per-layer", "max", "none"]
Placement = Literal["centre", "weighted-max", "weighted-mean"]
FormatSpec = Union[FPFormat, str]

_SCALINGS = ("per-layer", "max", "none")
_PLACEMENTS = ("centre", "weighted-max", "weighted-mean")
_ROUNDINGS = ("nearest", "stochastic")
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MAX_SCALE_EXP = 120


def log2_moments(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu2, sigma2, count): mean and std of log2|g| over finite nonzero entries.

    Returned as 0-d tensors on ``g``'s device so the training loop needs no host sync;
    mu2 = sigma2 = 0 when there is no such entry.
    """
    work = torch.float64 if g.dtype == torch.float64 else torch.float32
    mag = g.detach().abs().to(work)
    usable = (mag > 0) & torch.isfinite(mag)
    count = usable.sum(dtype=torch.float64)
    logs = torch.log2(torch.where(usable, mag, 1.0))
    denom = count.clamp_min(1.0)
    mu2 = logs.sum(dtype=torch.float64) / denom
    centred = torch.where(usable, logs - mu2.to(work), 0.0)
    sigma2 = torch.sqrt(centred.square().sum(dtype=torch.float64) / denom)
    return mu2, sigma2, count


def log2_mean(g: torch.Tensor) -> torch.Tensor:
    """mu2 alone (0-d tensor): the per-call part of ``log2_moments``, in fewer passes."""
    work = torch.float64 if g.dtype == torch.float64 else torch.float32
    mag = g.detach().abs().to(work)
    usable = (mag > 0) & torch.isfinite(mag)
    logs = torch.log2(torch.where(usable, mag, 1.0))
    return logs.sum(dtype=torch.float64) / usable.sum(dtype=torch.float64).clamp_min(1.0)


def max_scale_exponent(g: torch.Tensor, fmt: FPFormat) -> torch.Tensor:
    """The largest k (0-d float64 tensor) with max finite |g| * 2^k <= fmt.max_normal.

    0 when ``g`` has no finite nonzero entry.
    """
    mag = g.detach().abs()
    amax = torch.where(torch.isfinite(mag), mag, 0.0).amax().to(torch.float64)
    k = torch.floor(math.log2(fmt.max_normal) - torch.log2(amax))
    return torch.where(amax > 0, k, torch.zeros_like(k))


def weighted_scale_exponent(g: torch.Tensor, fmt: FPFormat) -> int:
    """The integer k whose scale 2^k minimizes sum|q - g| over the finite entries of ``g``,
    q = ``quantize_fp(g, fmt, scale=2^k)`` (round to nearest): the |g|-weighted error.

    Candidates: every k from 2 below to 2 above the span between the mean-centring
    exponent round(fmt.log2_centre - mu2) and the amax exponent ``max_scale_exponent``
    (the optimum lies there: below amax nothing saturates and only the smallest entries
    are lost, above the centre the top of the distribution is clipped); ties go to the
    smaller k (more headroom). One quantization per candidate; synchronizes with the
    host. Without a finite nonzero entry there is nothing to fit: the mean-centring
    exponent (mu2 taken as 0) is returned.
    """
    if not isinstance(fmt, FPFormat):
        raise TypeError(f"fmt must be an FPFormat, got {type(fmt).__name__}")
    mu2, _sigma2, count = log2_moments(g)
    k_centre = int(torch.round(fmt.log2_centre - mu2))
    if float(count) == 0:
        return k_centre
    k_max = int(max_scale_exponent(g, fmt))
    lo = max(min(k_centre, k_max) - 2, -_MAX_SCALE_EXP)
    hi = min(max(k_centre, k_max) + 2, _MAX_SCALE_EXP)
    work = g.detach()
    finite = torch.isfinite(work)
    work = torch.where(finite, work, torch.zeros_like(work))
    best_k, best_err = k_centre, math.inf
    for k in range(lo, hi + 1):
        q = quantize_fp_unchecked(work, fmt, stochastic=False, scale=math.ldexp(1.0, k), generator=None)
        err = float((q - work).abs().sum(dtype=torch.float64))
        if err < best_err:
            best_k, best_err = k, err
    return best_k


@dataclass(frozen=True)
class QuantLayerStats:
    """One layer's quantization state, measured on the most recent refresh call.

    ``fmt`` is the format in use (None before the first call); ``scale_exp`` the exponent
    k of the last applied scale 2^k (0 without scaling); ``mu2``/``sigma2`` mean and std of
    log2|g| over nonzeros; ``zero_fraction`` exact zeros in the incoming gradient;
    ``underflow_fraction`` nonzeros that became 0; ``saturated_fraction`` finite entries
    that reached +-max_normal or beyond; ``rel_error`` mean |q - g| / |g| over nonzeros;
    ``mean_target`` the log2 position t that per-layer scaling moved mu2 to on that call
    (``fmt.log2_centre`` with placement="centre", fitted with "weighted-*"; NaN otherwise).
    """

    name: str
    calls: int
    refreshes: int
    fmt: FPFormat | None
    scale_exp: int
    mu2: float
    sigma2: float
    zero_fraction: float
    underflow_fraction: float
    saturated_fraction: float
    rel_error: float
    mean_target: float = math.nan


class _LayerState:
    """Mutable per-layer bookkeeping behind a QuantLayerStats snapshot."""

    def __init__(self, name: str, fmt: FPFormat | None) -> None:
        self.name = name
        self.calls = 0
        self.refreshes = 0
        self.fmt = fmt
        self.scale_exp = 0
        self.mu2 = math.nan
        self.sigma2 = math.nan
        self.zero_fraction = math.nan
        self.underflow_fraction = math.nan
        self.saturated_fraction = math.nan
        self.rel_error = math.nan
        self.mean_target = math.nan
        self.top_offset = 0  # "weighted-max": fitted exponent minus the amax exponent

    def snapshot(self) -> QuantLayerStats:
        return QuantLayerStats(self.name, self.calls, self.refreshes, self.fmt, self.scale_exp,
                               self.mu2, self.sigma2, self.zero_fraction, self.underflow_fraction,
                               self.saturated_fraction, self.rel_error, self.mean_target)


def _resolve_format(fmt: object, bits: object) -> FPFormat | None:
    """None for "auto"; the FPFormat otherwise, after checking it agrees with ``bits``."""
    check_bits(bits)
    if isinstance(fmt, str):
        if fmt == "auto":
            return None
        fmt = FPFormat.from_name(fmt)
    if not isinstance(fmt, FPFormat):
        raise TypeError(f"fmt must be 'auto', a format name or an FPFormat, got {type(fmt).__name__}")
    if fmt.bits != bits:
        raise ValueError(f"fmt {fmt} has {fmt.bits} bits but bits={bits}: pass bits={fmt.bits}")
    return fmt


@dataclass(frozen=True)
class QuantizerConfig:
    """How a GradientQuantizer rounds (the counterpart of ``PrunerConfig``).

    ``fmt="auto"`` picks ``best_format(sigma2, bits)`` per layer from the measured spread;
    an FPFormat (or a name such as "e5m2") fixes the format (its width must equal
    ``bits``). ``scaling``: "per-layer" (one power of two per layer from log2|g|
    statistics, the paper's), "max" (largest |g| just under max_normal) or "none".
    ``placement`` (per-layer scaling only): "centre" (the paper's: mean log2|g| to
    ``fmt.log2_centre``), or the placement refitted per layer at each refresh to minimize
    the |g|-weighted error (``weighted_scale_exponent``; round-to-nearest, no generator
    draws), followed between refreshes as an offset from the per-call amax exponent
    ("weighted-max") or as a target for the per-call mean ("weighted-mean").
    ``refresh_every``: calls per layer between re-measuring sigma2 (and re-choosing the
    format, and refitting a weighted placement) and updating ``stats()``; the scale is
    recomputed on every call without host synchronization.
    """

    bits: int = 8
    fmt: FormatSpec = "auto"
    scaling: Scaling = "per-layer"
    placement: Placement = "centre"
    rounding: Rounding = "nearest"
    refresh_every: int = 100

    def __post_init__(self) -> None:
        _resolve_format(self.fmt, self.bits)
        if self.scaling not in _SCALINGS:
            raise ValueError(f"scaling must be one of {_SCALINGS}, got {self.scaling!r}")
        if self.placement not in _PLACEMENTS:
            raise ValueError(f"placement must be one of {_PLACEMENTS}, got {self.placement!r}")
        if self.placement != "centre" and self.scaling != "per-layer":
            raise ValueError(f"placement={self.placement!r} needs scaling='per-layer', got {self.scaling!r}")
        if self.rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {self.rounding!r}")
        if isinstance(self.refresh_every, bool) or not isinstance(self.refresh_every, int):
            raise TypeError(f"refresh_every must be an int, got {type(self.refresh_every).__name__}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")

    @property
    def fixed_format(self) -> FPFormat | None:
        """The format every layer uses, or None when each layer's is chosen ("auto")."""
        return _resolve_format(self.fmt, self.bits)


class GradientQuantizer:
    """Round the neural gradients entering the selected layers' outputs to an FP format.

    Usage::

        with GradientQuantizer(model, bits=6) as quantizer:   # auto format, per-layer scale
            for x, y in loader:
                loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
        print(quantizer.summary())

    The keyword arguments ``bits`` .. ``refresh_every`` are a :class:`QuantizerConfig`
    (what each means is documented there), kept as ``quantizer.config``; ``layer_types``
    and ``include`` select the layers, as for ``GradientPruner``. ``generator`` seeds
    stochastic rounding (same device as the gradients).
    """

    def __init__(self, model: nn.Module, bits: int = 8, fmt: FormatSpec = "auto", *,
                 scaling: Scaling = "per-layer", placement: Placement = "centre",
                 rounding: Rounding = "nearest",
                 layer_types: Iterable[type[nn.Module]] = DEFAULT_LAYER_TYPES,
                 include: str | ModuleFilter | None = None, refresh_every: int = 100,
                 generator: torch.Generator | None = None) -> None:
        self.config = QuantizerConfig(bits=bits, fmt=fmt, scaling=scaling, placement=placement,
                                      rounding=rounding, refresh_every=refresh_every)
        self.fixed_format = self.config.fixed_format
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        selected = select_modules(model, layer_types, include)
        self._states = {name: _LayerState(name, self.fixed_format) for name, _ in selected}
        self._handles = [attach_output_grad_transform(module, self._make_transform(self._states[name]))
                         for name, module in selected]

    # ------------------------------------------------------------------ the transform
    def _make_transform(self, state: _LayerState):  # noqa: ANN202 - closure over state
        def transform(grad: torch.Tensor) -> torch.Tensor:
            return self._quantize(state, grad)
        return transform

    def _quantize(self, state: _LayerState, grad: torch.Tensor) -> torch.Tensor:
        if grad.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"GradientQuantizer supports float32/float16/bfloat16/float64 gradients, "
                            f"got {grad.dtype} in layer {state.name!r}")
        refresh = state.calls % self.config.refresh_every == 0 or state.fmt is None
        state.calls += 1
        if refresh:
            mu2, sigma2, count = log2_moments(grad)
            state.refreshes += 1
            state.mu2, state.sigma2 = float(mu2), float(sigma2)
            if self.fixed_format is None and float(count) > 0:
                state.fmt = best_format(state.sigma2, self.config.bits)
        fmt = state.fmt
        if fmt is None:  # auto format and no nonzero gradient seen yet: nothing to round
            return grad
        scale = None
        if self.config.scaling != "none":
            if self.config.scaling == "per-layer":  # mean log2|g| -> within 0.5 of the target
                if refresh:
                    if self.config.placement == "centre" or float(count) == 0:  # nothing to fit
                        state.mean_target, state.top_offset = fmt.log2_centre, 0
                    else:  # fitted on this gradient, then tracked through a per-call statistic
                        k_fit = weighted_scale_exponent(grad, fmt)
                        state.mean_target = k_fit + state.mu2
                        state.top_offset = k_fit - int(max_scale_exponent(grad, fmt))
                if self.config.placement == "weighted-max":  # the fitted offset from amax
                    scale_exp = max_scale_exponent(grad, fmt) + state.top_offset
                else:
                    if not refresh:
                        mu2 = log2_mean(grad)
                    scale_exp = torch.round(state.mean_target - mu2)
            else:  # "max": the largest finite |g| lands in the top binade, never above max
                scale_exp = max_scale_exponent(grad, fmt)
            # clamped so that the scale and its inverse stay float32 normals
            scale_exp = scale_exp.clamp_(-_MAX_SCALE_EXP, _MAX_SCALE_EXP)
            scale = torch.exp2(scale_exp)
        out = quantize_fp_unchecked(grad, fmt, stochastic=self.config.rounding == "stochastic",
                                    scale=scale, generator=self.generator)
        if refresh:
            state.scale_exp = int(scale_exp) if scale is not None else 0
            self._measure(state, grad, out, fmt, scale)
        return out

    @staticmethod
    def _measure(state: _LayerState, grad: torch.Tensor, out: torch.Tensor, fmt: FPFormat,
                 scale: torch.Tensor | None) -> None:
        g = grad.detach().to(torch.float64)
        q = out.detach().to(torch.float64)
        nonzero = (g != 0) & torch.isfinite(g)
        count = int(nonzero.sum())
        numel = max(g.numel(), 1)
        state.zero_fraction = float((g == 0).sum()) / numel
        if count == 0:
            state.underflow_fraction = state.saturated_fraction = state.rel_error = 0.0
            return
        scaled = q.abs() * (scale.to(torch.float64) if scale is not None else 1.0)
        state.underflow_fraction = float((nonzero & (q == 0)).sum()) / count
        state.saturated_fraction = float((nonzero & (scaled >= fmt.max_normal)).sum()) / count
        rel = torch.where(nonzero, (q - g).abs() / torch.where(nonzero, g.abs(), 1.0), 0.0)
        state.rel_error = float(rel.sum()) / count

    # ------------------------------------------------------------------ public surface
    def stats(self) -> dict[str, QuantLayerStats]:
        """Per-layer statistics, keyed by qualified module name, in model order."""
        return {name: state.snapshot() for name, state in self._states.items()}

    def summary(self) -> str:
        """A fixed-width table of ``stats()`` for logs."""
        fmt = "auto" if self.fixed_format is None else str(self.fixed_format)
        placement = f" placement={self.config.placement}" if self.config.scaling == "per-layer" else ""
        header = (f"GradientQuantizer: bits={self.config.bits} fmt={fmt} scaling={self.config.scaling}{placement} "
                  f"rounding={self.config.rounding} refresh_every={self.config.refresh_every}")
        rows = [("layer", "calls", "format", "scale", "mu2", "target", "sigma2", "zeros_in",
                 "underflow", "saturated", "rel_err")]
        for s in self.stats().values():
            rows.append((s.name, str(s.calls), str(s.fmt) if s.fmt else "-", f"2^{s.scale_exp}",
                         f"{s.mu2:.2f}", f"{s.mean_target:.2f}", f"{s.sigma2:.2f}", f"{s.zero_fraction:.3f}",
                         f"{s.underflow_fraction:.4f}", f"{s.saturated_fraction:.4f}",
                         f"{s.rel_error:.4f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([header, *lines])

    def remove(self) -> None:
        """Detach every hook; gradients are exact again. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> GradientQuantizer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()
