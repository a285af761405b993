"""gradtools on CUDA: the same properties as on the CPU, and the same numbers where the rule is
deterministic. Skipped where torch sees no CUDA device (CI has none); run them on a GPU
machine with ``python -m pytest tests/test_gradtools_cuda.py``."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtools._hooks import attach_output_grad_transform
from gradtools import (FPFormat, GradientPruner, GradientQuantizer, fit_lognormal, pruning_threshold, quantize_fp,
                       stochastic_prune)
from tests.test_gradtools_prune import lognormal_tensor as cpu_lognormal_tensor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")

CUDA = torch.device("cuda")


def lognormal_tensor(n: int, mu: float, sigma: float, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The CPU tests' tensor (the same numbers everywhere), moved to the GPU."""
    return cpu_lognormal_tensor(n, mu, sigma, seed, dtype).to(CUDA)


def cuda_generator(seed: int) -> torch.Generator:
    return torch.Generator(device=CUDA).manual_seed(seed)


def sparsity_of(t: torch.Tensor) -> float:
    return float((t == 0).to(torch.float64).mean())


def test_fit_and_threshold_match_the_cpu() -> None:
    g = lognormal_tensor(200_000, -5.0, 2.0, seed=1)
    g[::5] = 0
    mu_gpu, sigma_gpu = fit_lognormal(g)
    mu_cpu, sigma_cpu = fit_lognormal(g.cpu())
    assert mu_gpu == pytest.approx(mu_cpu, rel=1e-6) and sigma_gpu == pytest.approx(sigma_cpu, rel=1e-6)
    assert pruning_threshold(0.85, 2.0) == pytest.approx(26.7, abs=0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.6])
def test_achieved_sparsity_dtype_and_device(dtype: torch.dtype, zero_fraction: float) -> None:
    g = lognormal_tensor(16 * 32 * 24 * 24, -6.0, 2.0, seed=2, dtype=dtype).view(16, 32, 24, 24)
    g.view(-1)[: int(zero_fraction * g.numel())] = 0
    out = stochastic_prune(g, 0.85, generator=cuda_generator(0))
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == g.shape
    assert sparsity_of(out) == pytest.approx(0.85, abs=0.01)
    assert torch.all(out[g == 0] == 0), "exact zeros stay zero"


def test_unbiased_and_large_entries_untouched() -> None:
    n, draws = 2_000, 2_000
    g = lognormal_tensor(n, -4.0, 1.5, seed=11)
    mu, sigma = fit_lognormal(g.repeat(draws))
    tau = pruning_threshold(0.85, sigma) * math.exp(mu)
    out = stochastic_prune(g.repeat(draws, 1), 0.85, generator=cuda_generator(5)).to(torch.float64)
    values = g.to(torch.float64)
    below = values.abs() < tau
    variance = torch.where(below, tau * values.abs() - values**2, 0.0)
    z = (out.mean(0) - values)[below] / torch.sqrt(variance[below] / draws)
    assert abs(float(z.mean()) * math.sqrt(z.numel())) < 3.0, "aggregate bias beyond 3 standard errors"
    assert float((z**2).mean()) == pytest.approx(1.0, abs=0.15)
    assert torch.equal(out[:, ~below], values[~below].expand(draws, -1)), "entries at or above tau untouched"


def test_seeded_runs_are_reproducible_and_a_cpu_generator_is_refused() -> None:
    g = lognormal_tensor(50_000, -6.0, 2.0, seed=9)
    first = stochastic_prune(g, 0.85, generator=cuda_generator(42))
    assert torch.equal(first, stochastic_prune(g, 0.85, generator=cuda_generator(42)))
    assert not torch.equal(first, stochastic_prune(g, 0.85, generator=cuda_generator(43)))
    with pytest.raises(ValueError, match="torch.Generator\\(device='cuda"):
        stochastic_prune(g, 0.85, generator=torch.Generator().manual_seed(0))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).to(CUDA)


def train_steps(model: nn.Module, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(32, 1, 16, 16, generator=gen).to(CUDA)
        y = torch.randint(0, 10, (32,), generator=gen).to(CUDA)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("min_cosine", [None, 0.92])
def test_pruner_trains_on_cuda_and_hits_the_target(min_cosine: float | None) -> None:
    model = small_cnn()
    with GradientPruner(model, 0.85, layer_types=(nn.Conv2d,), warmup_steps=2, min_cosine=min_cosine,
                        generator=cuda_generator(0)) as pruner:
        train_steps(model, 12)
    stats = pruner.stats()
    assert set(stats) == {"0", "3", "6"}
    for name, s in stats.items():
        assert s.fits == 10, name
        if min_cosine is None:
            assert s.mean_sparsity == pytest.approx(0.85, abs=0.04), name  # near-lognormal only
        else:
            assert 0.0 < s.mean_sparsity <= 0.86, name
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_pruner_refuses_a_cpu_generator_for_cuda_gradients() -> None:
    model = small_cnn()
    with GradientPruner(model, 0.85, generator=torch.Generator().manual_seed(0)):
        with pytest.raises(ValueError, match="generator is on cpu but the gradient is on cuda"):
            train_steps(model, 1)


@pytest.mark.parametrize("fmt", [FPFormat.E4M3FN, FPFormat.E5M2, FPFormat(3, 2)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nearest_rounding_is_bit_identical_to_the_cpu(fmt: FPFormat, dtype: torch.dtype) -> None:
    x = lognormal_tensor(100_000, -3.0, 3.0, seed=7, dtype=dtype)
    on_gpu = quantize_fp(x, fmt, scale=4.0)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == dtype
    assert torch.equal(on_gpu.cpu(), quantize_fp(x.cpu(), fmt, scale=4.0))


def test_fp8_matches_torchs_own_cuda_casts() -> None:
    x = lognormal_tensor(100_000, 0.0, 3.0, seed=8)
    x = x.clamp(-400.0, 400.0)  # inside E4M3FN's range: torch's cast does not saturate
    assert torch.equal(quantize_fp(x, FPFormat.E4M3FN), x.to(torch.float8_e4m3fn).to(torch.float32))
    assert torch.equal(quantize_fp(x, FPFormat.E5M2), x.to(torch.float8_e5m2).to(torch.float32))


def test_stochastic_rounding_is_seeded_and_unbiased() -> None:
    x = lognormal_tensor(4_000, -2.0, 1.0, seed=3)
    draws = x.repeat(500, 1)
    first = quantize_fp(draws, FPFormat.E5M2, rounding="stochastic", generator=cuda_generator(1))
    assert torch.equal(first, quantize_fp(draws, FPFormat.E5M2, rounding="stochastic", generator=cuda_generator(1)))
    relative_bias = ((first.mean(0) - x) / x.abs()).to(torch.float64)
    assert float(relative_bias.mean().abs()) < 2e-3


def test_quantizer_on_cuda_gives_on_grid_gradients() -> None:
    model = small_cnn()
    seen: list[torch.Tensor] = []
    quantizer = GradientQuantizer(model, bits=8, fmt=FPFormat.E4M3FN, layer_types=(nn.Conv2d,), refresh_every=1)
    attach_output_grad_transform(model[3], lambda grad: seen.append(grad.detach().clone()))  # after the quantizer
    train_steps(model, 3)
    quantizer.remove()
    assert len(seen) == 3 and all(g.device.type == "cuda" for g in seen)
    on_grid = seen[-1] * 2.0 ** quantizer.stats()["3"].scale_exp
    assert torch.equal(quantize_fp(on_grid, FPFormat.E4M3FN), on_grid)
    assert int(torch.count_nonzero(on_grid)) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
