"""Unbiased stochastic pruning of neural gradients with a lognormal-derived threshold.

Why stochastic: zeroing small gradients (magnitude pruning) biases every update towards
zero; replacing an entry below the threshold tau by tau*sign(g) with probability |g|/tau
(else 0) keeps E[pruned] = g, so SGD still follows the true gradient on average while
most entries become zero. Why lognormal: |g| of neural gradients is near-lognormal, so
tau for a target sparsity follows from (mu, sigma) of ln|g| without sorting the tensor
(see ``gradtools.lognormal`` and docs/gradtools_pruning.md).

``stochastic_prune`` handles one tensor; ``GradientPruner`` attaches it to the outputs of
a model's layers with per-layer statistics refreshed on a schedule.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from scipy.special import ndtri
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradtools._hooks import (DEFAULT_LAYER_TYPES, GradTransform, ModuleFilter, attach_output_grad_transform,
                              select_modules)
from gradtools.lognormal import pruning_threshold

__all__ = ["stochastic_prune", "PrunerConfig", "LayerStats", "GradientPruner", "PRUNING_METHODS"]

PruningMethod = Literal["stochastic", "magnitude", "topk"]
#: "stochastic" is the method; "magnitude" (zero below a lognormal quantile, biased) and
#: "topk" (keep the exact k largest, biased, needs a selection) are baselines to compare.
PRUNING_METHODS: tuple[str, ...] = ("stochastic", "magnitude", "topk")

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: Below this log-spread the tensor is effectively single-valued; S(alpha, sigma) -> 1 - 1/alpha.
_MIN_SIGMA = 1e-6


# --------------------------------------------------------------------------- validation


def _check_sparsity(sparsity: object) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a float in (0, 1), got {type(sparsity).__name__}")
    sparsity = float(sparsity)
    if not (math.isfinite(sparsity) and 0.0 < sparsity < 1.0):
        raise ValueError(f"sparsity must be in the open interval (0, 1), got {sparsity}")
    return sparsity


def _check_gradient(g: object) -> torch.Tensor:
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(g).__name__}")
    if g.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"gradient pruning supports float32/float16/bfloat16/float64, got {g.dtype}")
    return g


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the gradient is on {device}; "
                         f"create it with torch.Generator(device={str(device)!r})")


# --------------------------------------------------------------------------- the statistics


@dataclass(frozen=True)
class _Fit:
    """What one tensor tells us: lognormal (mu, sigma) of its nonzeros and its zero fraction."""

    mu: float
    sigma: float
    zero_fraction: float
    numel: int


def _work_dtype(g: torch.Tensor) -> torch.dtype:
    """float32 for the statistics and comparisons of fp32/fp16/bf16; float64 stays float64."""
    return torch.float64 if g.dtype == torch.float64 else torch.float32


def _fit_tensor(g: torch.Tensor) -> _Fit | None:
    """Fit one gradient; None when it cannot be fitted (fewer than 2 nonzeros, or inf/nan).

    Non-finite gradients are not an error here: with AMP loss scaling an overflowing step
    must reach the scaler unchanged so that it can skip the step and lower the scale.
    """
    magnitudes = g.detach().abs().to(_work_dtype(g))
    nonzero = magnitudes != 0
    count = int(torch.count_nonzero(nonzero))
    if count < 2:
        return None
    # Masked sums instead of gathering the nonzeros: fewer passes over the tensor. The
    # logs are float32, every sum accumulates in float64; inf/nan surface in the mean.
    logs = torch.log(torch.where(nonzero, magnitudes, 1.0))
    mu = float(logs.sum(dtype=torch.float64)) / count
    if not math.isfinite(mu):
        return None
    centered = torch.where(nonzero, logs.sub_(mu), 0.0)
    sigma = math.sqrt(float(centered.square_().sum(dtype=torch.float64)) / count)
    numel = g.numel()
    return _Fit(mu, sigma, 1.0 - count / numel, numel)


def _nonzero_target(sparsity: float, zero_fraction: float) -> float | None:
    """Sparsity to aim at among the nonzeros so the whole tensor reaches ``sparsity``."""
    if zero_fraction >= sparsity:
        return None
    return (sparsity - zero_fraction) / (1.0 - zero_fraction)


def _stochastic_alpha(target: float, sigma: float) -> float:
    if sigma < _MIN_SIGMA:
        return 1.0 / (1.0 - target)
    return pruning_threshold(target, sigma)


def _magnitude_alpha(target: float, sigma: float) -> float:
    """Lognormal quantile: zeroing |g| below exp(mu) * alpha removes ``target`` of the nonzeros."""
    return math.exp(max(sigma, 0.0) * float(ndtri(target)))


def added_noise_ratio(g: torch.Tensor, tau: float) -> float:
    """Variance the stochastic rule at ``tau`` adds to ``g``, as a share of its energy:
    sum over |g| < tau of (tau |g| - g^2), divided by sum g^2. The expected cosine
    similarity of the pruned gradient with ``g`` is about 1 / sqrt(1 + this)."""
    a = g.detach().abs().to(torch.float64).flatten()
    a = a[torch.isfinite(a)]
    energy = float((a * a).sum())
    if energy == 0.0:
        return 0.0
    below = a[a < tau]
    return float((tau * below - below * below).sum()) / energy


#: Log-spaced buckets of the noise-floor search: the exact answer is then found by sorting
#: one bucket's entries instead of the whole gradient.
_CAP_BUCKETS = 2048


def _noise_capped_tau(g: torch.Tensor, tau: float, max_ratio: float) -> float:
    """The largest threshold <= ``tau`` whose :func:`added_noise_ratio` on ``g`` is at most
    ``max_ratio``; ``tau`` itself when it already meets it.

    Exact: the noise t * S1(t) - S2(t) (S1, S2: sums of |g| and g^2 over |g| < t) is
    increasing and piecewise linear in t between consecutive magnitudes. Only the entries
    below ``tau`` carry noise, so they are bucketed by log-magnitude (one pass) to find the
    bucket where the noise crosses the budget, and only that bucket is sorted, instead of
    sorting the whole gradient on every refit.
    """
    a = g.detach().abs().to(torch.float64).flatten()
    a = a[torch.isfinite(a) & (a > 0)]
    if a.numel() == 0:
        return tau
    budget = max_ratio * float((a * a).sum())
    below = a[a < tau]
    squares = below * below
    if below.numel() == 0 or tau * float(below.sum()) - float(squares.sum()) <= budget:
        return tau
    logs = below.log()
    lo, hi = float(logs.min()), math.log(tau)
    buckets = min(_CAP_BUCKETS, below.numel())
    # Monotone in |g|: every entry of an earlier bucket is smaller than every entry of a later one.
    scale = buckets / (hi - lo) if hi > lo else 0.0  # all within an ulp of tau: one bucket
    index = ((logs - lo) * scale).floor_().clamp_(0, buckets - 1).long()
    sum_abs = torch.bincount(index, weights=below, minlength=buckets)
    sum_sq = torch.bincount(index, weights=squares, minlength=buckets)
    smallest = torch.full((buckets,), math.inf, dtype=torch.float64, device=a.device)
    smallest.scatter_reduce_(0, index, below, reduce="amin")
    # Noise with the threshold at each bucket's smallest entry: only earlier buckets lie below it.
    below_abs = torch.cumsum(sum_abs, 0) - sum_abs
    below_sq = torch.cumsum(sum_sq, 0) - sum_sq
    noise_at = torch.where(torch.isfinite(smallest), smallest * below_abs - below_sq, math.inf)
    # The first bucket's smallest entry has nothing below it (noise 0 <= budget), so one qualifies.
    j = int(torch.nonzero(noise_at <= budget).max())
    inside = torch.sort(below[index == j]).values
    prefix_abs = torch.cumsum(inside, 0) + below_abs[j]
    prefix_sq = torch.cumsum(inside * inside, 0) + below_sq[j]
    # Threshold exactly at inside[k]: the earlier buckets and inside[0..k-1] are below it.
    noise_inside = torch.cat([noise_at[j:j + 1], inside[1:] * prefix_abs[:-1] - prefix_sq[:-1]])
    k = max(int(torch.searchsorted(noise_inside, a.new_tensor([budget]), right=True)[0]) - 1, 0)
    # Between inside[k] and the next magnitude, inside[0..k] and the earlier buckets are below.
    capped = (budget + float(prefix_sq[k])) / float(prefix_abs[k])
    if k + 1 < inside.numel():
        capped = min(capped, float(inside[k + 1]))
    elif j + 1 < buckets:
        capped = min(capped, float(smallest[j + 1:].min()))  # the next bucket's smallest entry
    return min(tau, capped)


# --------------------------------------------------------------------------- the transforms


def _representable_threshold(tau: float, dtype: torch.dtype) -> float:
    """tau rounded to ``dtype``: the comparison and the written value must use the same
    number, or E[pruned] = |g|/tau * tau_rounded would be biased in fp16/bf16."""
    rounded = float(torch.tensor(tau, dtype=torch.float64).to(dtype).to(torch.float64))
    if math.isinf(rounded):
        rounded = float(torch.finfo(dtype).max)
    return rounded


def _apply_stochastic(g: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    """|g| < tau -> tau*sign(g) with probability |g|/tau, else 0; others unchanged."""
    tau = _representable_threshold(tau, g.dtype)
    if tau <= 0.0:
        return g
    work = _work_dtype(g)
    magnitudes = g.abs().to(work)
    # drop <=> u * tau >= |g|: never at or above tau, probability 1 - |g|/tau below it; a
    # kept entry becomes sign(g) * max(|g|, tau), i.e. g itself or tau*sign(g). Written as
    # "drop" so that nan (never >=) is kept and an AMP overflow still reaches the scaler.
    scaled_uniform = torch.rand(g.shape, generator=generator, device=g.device, dtype=work).mul_(tau)
    kept = torch.copysign(magnitudes.clamp_min(tau), g)
    return torch.where(scaled_uniform >= magnitudes, 0.0, kept).to(g.dtype)


def _apply_magnitude(g: torch.Tensor, tau: float) -> torch.Tensor:
    tau = _representable_threshold(tau, g.dtype)
    return torch.where(g.abs().to(_work_dtype(g)) < tau, torch.zeros((), dtype=g.dtype, device=g.device), g)


def _apply_topk(g: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep exactly the round((1 - sparsity) * numel) largest-magnitude entries."""
    numel = g.numel()
    keep = numel - int(round(sparsity * numel))
    if keep >= numel or int(torch.count_nonzero(g)) <= keep:
        return g
    flat = g.reshape(-1)
    kept_index = torch.topk(flat.abs().to(_work_dtype(g)), keep, sorted=False).indices
    out = torch.zeros_like(flat)
    out[kept_index] = flat[kept_index]
    return out.view_as(g)


def stochastic_prune(g: torch.Tensor, sparsity: float, *,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Prune ``g`` to about ``sparsity`` zeros, unbiasedly, from a lognormal fit of ``g``.

    tau = alpha * exp(mu) with alpha = pruning_threshold(target, sigma), where the target on
    the nonzeros accounts for the zeros already present (if they already reach
    ``sparsity``, ``g`` is returned as is). Statistics are computed in float32/float64;
    the result has ``g``'s dtype and device. Tensors with inf/nan or fewer than 2 nonzeros
    are returned unchanged. ``generator`` (on ``g``'s device) makes the draw reproducible.
    """
    g = _check_gradient(g)
    sparsity = _check_sparsity(sparsity)
    _check_generator(generator, g.device)
    fit = _fit_tensor(g)
    if fit is None:
        return g
    target = _nonzero_target(sparsity, fit.zero_fraction)
    if target is None:
        return g
    tau = _stochastic_alpha(target, fit.sigma) * math.exp(fit.mu)
    return _apply_stochastic(g, tau, generator)


# --------------------------------------------------------------------------- the pruner


@dataclass(frozen=True)
class PrunerConfig:
    """How a GradientPruner prunes.

    ``warmup_steps``: backward passes per layer left at full precision before pruning
    starts (the statistics of an untrained net move fast). ``refresh_every``: backward
    passes per layer between lognormal fits; the threshold tau is reused in between, which
    costs no host synchronization but drifts off target as the gradient scale moves.
    1 (default) refits every call (docs/gradtools_pruning.md measures both).
    ``min_cosine``: at each fit, lower a layer's threshold where needed so that the
    pruned gradient's expected cosine similarity with the exact one stays >= this (the
    added variance <= 1/min_cosine^2 - 1 of the gradient's energy, measured on the
    tensor itself); that layer then prunes less than ``sparsity``. None: no floor.
    ``global_budget``: ``sparsity`` is the target of all the pruner's layers together
    (counted in gradient elements), as in the reference: the layers without the floor
    are re-targeted at each fit so that, with the zeros the floor layers produced at
    their last call, the total reaches ``sparsity``; no layer is aimed above
    ``max_sparsity``. The floor layers should be the deep ones (they run first in the
    backward pass, so their zeros are the current pass's).
    """

    sparsity: float = 0.85
    warmup_steps: int = 0
    refresh_every: int = 1
    method: PruningMethod = "stochastic"
    enabled: bool = True
    min_cosine: float | None = None
    global_budget: bool = False
    max_sparsity: float = 0.95

    def __post_init__(self) -> None:
        _check_sparsity(self.sparsity)
        _check_sparsity(self.max_sparsity)
        if not isinstance(self.global_budget, bool):
            raise TypeError(f"global_budget must be a bool, got {type(self.global_budget).__name__}")
        if self.global_budget and self.method != "stochastic":
            raise ValueError("global_budget re-targets the stochastic rule's fits; use method='stochastic'")
        if self.global_budget and self.max_sparsity < self.sparsity:
            raise ValueError(f"max_sparsity ({self.max_sparsity}) must be >= sparsity ({self.sparsity})")
        if self.min_cosine is not None:
            if isinstance(self.min_cosine, bool) or not isinstance(self.min_cosine, (int, float)):
                raise TypeError(f"min_cosine must be a number or None, got {type(self.min_cosine).__name__}")
            if not 0.0 < self.min_cosine < 1.0:
                raise ValueError(f"min_cosine must be in (0, 1), e.g. 0.95, got {self.min_cosine}")
            if self.method != "stochastic":
                raise ValueError("min_cosine bounds the noise of the stochastic rule; use method='stochastic'")
        for name in ("warmup_steps", "refresh_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")
        if self.method not in PRUNING_METHODS:
            raise ValueError(f"method must be one of {PRUNING_METHODS}, got {self.method!r}")
        if not isinstance(self.enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(self.enabled).__name__}")


@dataclass(frozen=True)
class LayerStats:
    """One layer's pruning state. Fit fields are NaN until the first fit (after warm-up).

    ``threshold`` is tau (absolute); ``alpha`` = tau / exp(mu); ``zero_fraction`` is the
    fraction of exact zeros in the incoming gradient at the last fit; ``last_sparsity`` and
    ``mean_sparsity`` are the achieved output sparsity of the last pruned call and the
    running average over all pruned calls. ``threshold`` is NaN when the zeros already
    present met the target (nothing pruned until the next fit). ``target`` is the
    sparsity the last fit aimed at (``sparsity``, or its global-budget share);
    ``floor`` says whether the ``min_cosine`` floor applies to the layer.
    """

    name: str
    calls: int
    pruned_calls: int
    fits: int
    mu: float
    sigma: float
    alpha: float
    threshold: float
    zero_fraction: float
    last_sparsity: float
    mean_sparsity: float
    target: float = math.nan
    floor: bool = False


class _LayerState:
    """Mutable per-layer bookkeeping behind one hook. Counters stay on the device as
    tensors so that recording the achieved sparsity never forces a host sync."""

    def __init__(self, name: str, floor: bool = False) -> None:
        self.name = name
        self.floor = floor
        self.numel = 0  # elements of the last gradient seen (the global budget's weights)
        self.target = math.nan
        self.calls = 0
        self.pruned_calls = 0
        self.fits = 0
        self.fit: _Fit | None = None
        self.alpha = math.nan
        self.tau: float | None = None
        self.zeros_sum: torch.Tensor | None = None
        self.elements_sum = 0
        self.last_zeros: torch.Tensor | None = None
        self.last_numel = 0

    def record(self, out: torch.Tensor) -> None:
        zeros = out.numel() - torch.count_nonzero(out)
        self.zeros_sum = zeros if self.zeros_sum is None else self.zeros_sum + zeros
        self.elements_sum += out.numel()
        self.last_zeros, self.last_numel = zeros, out.numel()
        self.pruned_calls += 1

    def snapshot(self) -> LayerStats:
        fit = self.fit
        last = float(self.last_zeros) / self.last_numel if self.last_zeros is not None else math.nan
        mean = float(self.zeros_sum) / self.elements_sum if self.zeros_sum is not None else math.nan
        return LayerStats(
            name=self.name, calls=self.calls, pruned_calls=self.pruned_calls, fits=self.fits,
            mu=fit.mu if fit else math.nan, sigma=fit.sigma if fit else math.nan,
            alpha=self.alpha, threshold=self.tau if self.tau is not None else math.nan,
            zero_fraction=fit.zero_fraction if fit else math.nan,
            last_sparsity=last, mean_sparsity=mean, target=self.target, floor=self.floor,
        )


class GradientPruner:
    r"""Prune the neural gradients entering the selected layers' outputs during backward.

    Usage (no extra line in the training loop: steps are counted per layer as backward
    passes through it)::

        with GradientPruner(model, 0.85, warmup_steps=100) as pruner:
            for x, y in loader:
                loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
        print(pruner.summary())

    Or keep it as an object and call ``pruner.remove()`` to restore exact gradients.
    Forward passes under ``torch.no_grad()`` are untouched. A module called several times
    per forward counts one step per call.

    ``min_cosine`` applies to every selected layer, or with ``floor`` (a regex on the
    qualified name or a predicate, like ``include``) to those layers only; with
    ``global_budget=True`` the other layers take up what the floor holds back (see
    :class:`PrunerConfig`), e.g. the reference's ResNet-18 recipe::

        GradientPruner(model, 0.85, min_cosine=0.92, floor=r"^layers\.[23]\.", global_budget=True)
    """

    def __init__(self, model: nn.Module, sparsity: float = 0.85, *,
                 layer_types: Iterable[type[nn.Module]] = DEFAULT_LAYER_TYPES,
                 include: str | ModuleFilter | None = None,
                 warmup_steps: int = 0, refresh_every: int = 1,
                 method: PruningMethod = "stochastic", enabled: bool = True,
                 min_cosine: float | None = None,
                 floor: str | ModuleFilter | None = None,
                 global_budget: bool = False, max_sparsity: float = 0.95,
                 generator: torch.Generator | None = None) -> None:
        self.config = PrunerConfig(sparsity=sparsity, warmup_steps=warmup_steps,
                                   refresh_every=refresh_every, method=method, enabled=enabled,
                                   min_cosine=min_cosine, global_budget=global_budget,
                                   max_sparsity=max_sparsity)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if floor is not None and min_cosine is None:
            raise ValueError("floor chooses the layers min_cosine applies to; give min_cosine too")
        self.generator = generator
        #: Switch pruning off/on without removing the hooks (steps are not counted while off).
        self.enabled = enabled
        self._states: dict[str, _LayerState] = {}
        self._handles: list[RemovableHandle] = []
        selected = select_modules(model, layer_types, include)
        if min_cosine is None:
            floored: set[int] = set()
        elif floor is None:
            floored = {id(module) for _, module in selected}
        else:
            floored = {id(m) for _, m in select_modules(model, layer_types, floor)} & {id(m) for _, m in selected}
            if not floored:
                raise ValueError(f"the floor selection {floor!r} matched none of the pruned layers")
        for name, module in selected:
            state = _LayerState(name or type(module).__name__, floor=id(module) in floored)
            self._states[state.name] = state
            self._handles.append(attach_output_grad_transform(module, self._transform_for(state)))

    # ---- hooks

    def _transform_for(self, state: _LayerState) -> GradTransform:
        def transform(grad: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled or not self._handles:
                return None
            return self._prune(state, grad)
        return transform

    def _prune(self, state: _LayerState, grad: torch.Tensor) -> torch.Tensor | None:
        cfg = self.config
        step = state.calls
        state.calls += 1
        state.numel = grad.numel()
        if step < cfg.warmup_steps or grad.dtype not in _SUPPORTED_DTYPES:
            return None
        _check_generator(self.generator, grad.device)
        if cfg.method == "topk":
            out = _apply_topk(grad, cfg.sparsity)
            state.record(out)
            return out
        if (step - cfg.warmup_steps) % cfg.refresh_every == 0 or state.fits == 0:
            if not self._refit(state, grad):
                return None
        if state.tau is None:
            state.record(grad)
            return None
        if cfg.method == "stochastic":
            out = _apply_stochastic(grad, state.tau, self.generator)
        else:
            out = _apply_magnitude(grad, state.tau)
        state.record(out)
        return out

    def _refit(self, state: _LayerState, grad: torch.Tensor) -> bool:
        """Fit this gradient and cache tau; False when it cannot be fitted (left as is)."""
        fit = _fit_tensor(grad)
        if fit is None:
            return False
        state.fit, state.fits = fit, state.fits + 1
        state.target = self._sparsity_for(state)
        target = _nonzero_target(state.target, fit.zero_fraction)
        if target is None:
            state.alpha, state.tau = math.nan, None
            return True
        if self.config.method == "stochastic":
            state.alpha = _stochastic_alpha(target, fit.sigma)
        else:
            state.alpha = _magnitude_alpha(target, fit.sigma)
        state.tau = state.alpha * math.exp(fit.mu)
        if state.floor:
            capped = _noise_capped_tau(grad, state.tau, self.config.min_cosine ** -2 - 1.0)
            if capped < state.tau:
                state.tau, state.alpha = capped, capped / math.exp(fit.mu)
        return True

    def _sparsity_for(self, state: _LayerState) -> float:
        """The layer's sparsity target: ``sparsity``, or under the global budget, for a layer
        without the floor, its share of what the floor layers left (capped at
        ``max_sparsity``); ``sparsity`` until every layer has been seen once."""
        cfg = self.config
        if not cfg.global_budget or state.floor:
            return cfg.sparsity
        states = list(self._states.values())
        if any(s.numel == 0 for s in states):
            return cfg.sparsity
        total = sum(s.numel for s in states)
        free = sum(s.numel for s in states if not s.floor)
        floor = [s for s in states if s.floor]
        counted = [s.last_zeros for s in floor if s.last_zeros is not None]
        # One host sync for all floor layers; one not pruned yet (warm-up) is assumed to meet the target.
        floor_zeros = (float(sum(counted)) if counted else 0.0) + sum(
            cfg.sparsity * s.numel for s in floor if s.last_zeros is None)
        return min((cfg.sparsity * total - floor_zeros) / free, cfg.max_sparsity)

    # ---- lifecycle

    def remove(self) -> None:
        """Detach every hook; gradients are exact again. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> GradientPruner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()

    # ---- reporting

    def stats(self) -> dict[str, LayerStats]:
        """Per-layer statistics, keyed by qualified module name, in model order."""
        return {name: state.snapshot() for name, state in self._states.items()}

    def summary(self) -> str:
        """A fixed-width table of ``stats()`` for logs."""
        cfg = self.config
        header = (f"GradientPruner: method={cfg.method} target={cfg.sparsity:.3f} "
                  f"warmup={cfg.warmup_steps} refresh_every={cfg.refresh_every}")
        if cfg.min_cosine is not None:
            header += f" min_cosine={cfg.min_cosine:g} (floor layers marked *)"
        if cfg.global_budget:
            header += f" global_budget (max {cfg.max_sparsity:g})"
        rows = [("layer", "calls", "pruned", "target", "mu", "sigma", "alpha", "tau", "zeros_in", "last", "mean")]
        for s in self.stats().values():
            rows.append((s.name + (" *" if s.floor else ""), str(s.calls), str(s.pruned_calls), f"{s.target:.3f}",
                         f"{s.mu:.3f}", f"{s.sigma:.3f}",
                         f"{s.alpha:.4g}", f"{s.threshold:.3e}", f"{s.zero_fraction:.3f}",
                         f"{s.last_sparsity:.3f}", f"{s.mean_sparsity:.3f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [header]
        for i, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            lines.append("  ".join(cells))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)
