"""Lognormal statistics of neural gradients and the pruning threshold derived from them.

Why a model at all: choosing a pruning threshold from the exact empirical quantile needs a
sort (or selection) over every gradient tensor; the near-lognormal shape of |g| lets two
numbers (mu, sigma of ln|g|) predict the sparsity any threshold will give, so the
threshold is a closed-form root-finding problem on the host.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

__all__ = ["fit_lognormal", "expected_sparsity", "pruning_threshold"]


def _finite_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def fit_lognormal(t: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Fit ln|t| of the nonzero entries to a normal: returns (mu, sigma) in natural-log units.

    Exact zeros are excluded because they are structural (ReLU, padding), not the tail of
    the distribution. The math runs in float64 so fp16/bf16 inputs do not lose the fit.
    sigma is the maximum-likelihood (population) standard deviation.
    """
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fit_lognormal expects a torch.Tensor or numpy array, got {type(t).__name__}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"fit_lognormal needs a real-valued tensor, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("fit_lognormal got non-finite values (inf/nan); "
                         "check for overflow before fitting")
    magnitudes = t.detach().abs().flatten()
    nonzero = magnitudes[magnitudes != 0]
    if nonzero.numel() < 2:
        raise ValueError(f"fit_lognormal needs at least 2 nonzero entries, got {nonzero.numel()}")
    logs = torch.log(nonzero.to(torch.float64))
    mu = logs.mean()
    sigma = torch.sqrt(torch.mean((logs - mu) ** 2))
    return float(mu), float(sigma)


def _check_sigma(sigma: object) -> float:
    sigma = _finite_float("sigma", sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return sigma


def _sparsity_at_log_alpha(log_alpha: float, sigma: float) -> float:
    """S as a function of ln(alpha); the second term is evaluated in log space so it
    neither overflows (exp(sigma^2/2) for wide distributions) nor underflows to 0/0."""
    first = float(ndtr(log_alpha / sigma))
    log_second = sigma * sigma / 2.0 - log_alpha + float(log_ndtr((log_alpha - sigma * sigma) / sigma))
    return first - math.exp(log_second)


def expected_sparsity(alpha: float, sigma: float) -> float:
    """Expected fraction of nonzero lognormal entries that stochastic pruning zeroes.

    ``alpha`` is the threshold in units of exp(mu):
    S(alpha, sigma) = Phi(ln a / sigma) - exp(sigma^2 / 2) / a * Phi((ln a - sigma^2) / sigma).
    """
    alpha = _finite_float("alpha", alpha)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return _sparsity_at_log_alpha(math.log(alpha), _check_sigma(sigma))


def pruning_threshold(sparsity: float, sigma: float) -> float:
    """The alpha (threshold / exp(mu)) at which stochastic pruning reaches ``sparsity``.

    S is strictly increasing in alpha from 0 to 1, so a bracket in ln(alpha) that is
    widened until it straddles the target always exists; brentq then finds the root.
    """
    sparsity = _finite_float("sparsity", sparsity)
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in the open interval (0, 1), got {sparsity}")
    sigma = _check_sigma(sigma)

    def gap(log_alpha: float) -> float:
        return _sparsity_at_log_alpha(log_alpha, sigma) - sparsity

    lo, hi = -sigma, sigma + sigma * sigma
    for _ in range(200):
        if gap(lo) < 0:
            break
        lo -= max(sigma, 1.0) * 2
    else:
        raise ValueError(f"sparsity {sparsity} is too close to 0 for sigma {sigma}")
    for _ in range(200):
        if gap(hi) > 0:
            break
        hi += max(sigma, 1.0) * 2
    else:
        raise ValueError(f"sparsity {sparsity} is too close to 1 for sigma {sigma}")
    log_alpha = brentq(gap, lo, hi, xtol=1e-12, rtol=1e-12, maxiter=200)
    return math.exp(log_alpha)
