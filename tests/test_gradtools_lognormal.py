"""Lognormal fit and the stochastic-pruning threshold (gradtools.lognormal)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradtools import expected_sparsity, fit_lognormal, pruning_threshold

SIGMAS = (0.5, 1.0, 2.0, 3.0, 4.0)
SPARSITIES = (0.5, 0.7, 0.85, 0.9, 0.95)


def lognormal_samples(n: int, mu: float, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(mu, sigma, n)) * rng.choice([-1.0, 1.0], n)


# --------------------------------------------------------------------------- fit


@pytest.mark.parametrize("mu,sigma", [(-12.0, 2.0), (0.0, 0.5), (3.0, 4.0)])
def test_fit_recovers_parameters(mu: float, sigma: float) -> None:
    t = torch.from_numpy(lognormal_samples(200_000, mu, sigma, seed=1))
    fitted_mu, fitted_sigma = fit_lognormal(t)
    assert fitted_mu == pytest.approx(mu, abs=0.03)
    assert fitted_sigma == pytest.approx(sigma, rel=0.01)


def test_fit_ignores_exact_zeros_and_accepts_numpy() -> None:
    values = lognormal_samples(50_000, -5.0, 1.5, seed=2)
    with_zeros = np.concatenate([values, np.zeros(150_000)])
    assert fit_lognormal(with_zeros) == pytest.approx(fit_lognormal(values), abs=1e-12)


def test_fit_of_half_precision_uses_full_precision_math() -> None:
    t = torch.from_numpy(lognormal_samples(100_000, -6.0, 1.0, seed=3)).to(torch.float16)
    mu, sigma = fit_lognormal(t)
    logs = np.log(np.abs(t.to(torch.float64).numpy()))
    assert mu == pytest.approx(logs.mean(), abs=1e-9)
    assert sigma == pytest.approx(logs.std(), abs=1e-9)


@pytest.mark.parametrize("bad", [torch.zeros(10), torch.tensor([0.0, 3.0, 0.0])])
def test_fit_needs_two_nonzeros(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="at least 2 nonzero"):
        fit_lognormal(bad)


@pytest.mark.parametrize("bad_value", [math.inf, -math.inf, math.nan])
def test_fit_rejects_non_finite(bad_value: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        fit_lognormal(torch.tensor([1.0, 2.0, bad_value]))


def test_fit_rejects_non_tensor() -> None:
    with pytest.raises(TypeError):
        fit_lognormal([1.0, 2.0])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- threshold


def test_reference_check_value() -> None:
    assert pruning_threshold(0.85, 2.0) == pytest.approx(26.7, abs=0.05)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_threshold_matches_monte_carlo(sigma: float) -> None:
    """Monte Carlo over 1e6 lognormal(0, sigma) samples: the expected fraction zeroed
    (per sample 1 - x/alpha below alpha) and an actual Bernoulli draw both hit the target."""
    rng = np.random.default_rng(int(sigma * 10))
    x = np.exp(rng.normal(0.0, sigma, 1_000_000))
    u = rng.random(x.size)
    for target in SPARSITIES:
        alpha = pruning_threshold(target, sigma)
        zero_probability = np.where(x < alpha, 1.0 - x / alpha, 0.0)
        assert zero_probability.mean() == pytest.approx(target, abs=2e-3)
        drawn = np.where(x < alpha, np.where(u * alpha < x, alpha, 0.0), x)
        assert np.mean(drawn == 0) == pytest.approx(target, abs=3e-3)
        # unbiased: the mean is preserved (relative to the mean of x)
        assert drawn.mean() == pytest.approx(x.mean(), rel=0.02 if sigma < 3 else 0.2)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_threshold_inverts_expected_sparsity(sigma: float) -> None:
    alphas = [pruning_threshold(s, sigma) for s in (0.01, *SPARSITIES, 0.999)]
    assert alphas == sorted(alphas)
    for target in (0.01, *SPARSITIES, 0.999):
        assert expected_sparsity(pruning_threshold(target, sigma), sigma) == pytest.approx(target, abs=1e-9)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.2, 1.5, math.nan, math.inf])
def test_threshold_rejects_bad_sparsity(sparsity: float) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        pruning_threshold(sparsity, 2.0)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan, math.inf])
def test_threshold_rejects_bad_sigma(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma"):
        pruning_threshold(0.85, sigma)


def test_threshold_rejects_non_numbers() -> None:
    with pytest.raises(TypeError):
        pruning_threshold("0.85", 2.0)  # type: ignore[arg-type]
