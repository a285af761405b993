"""Stochastic gradient pruning: one tensor (stochastic_prune) and a model (GradientPruner)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtools import (GradientPruner, LayerStats, PrunerConfig, added_noise_ratio, fit_lognormal, pruning_threshold,
                       stochastic_prune)
from gradtools.prune import _noise_capped_tau
from gradtools._hooks import attach_output_grad_transform

SIGMAS = (0.5, 1.0, 2.0, 4.0)
SPARSITIES = (0.5, 0.7, 0.85, 0.95)


def lognormal_tensor(n: int, mu: float, sigma: float, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.exp(torch.randn(n, generator=gen, dtype=torch.float64) * sigma + mu)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    return (magnitude * sign).to(dtype)


def sparsity_of(t: torch.Tensor) -> float:
    return float((t == 0).to(torch.float64).mean())


def threshold_of(g: torch.Tensor, sparsity: float) -> float:
    """tau recomputed independently from the public fit/threshold functions."""
    mu, sigma = fit_lognormal(g)
    zeros = sparsity_of(g)
    return pruning_threshold((sparsity - zeros) / (1 - zeros), sigma) * math.exp(mu)


# --------------------------------------------------------------------------- one tensor


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("target", SPARSITIES)
def test_achieved_sparsity_on_lognormal(sigma: float, target: float) -> None:
    g = lognormal_tensor(200_000, -10.0, sigma, seed=int(100 * sigma + 1000 * target))
    out = stochastic_prune(g, target, generator=torch.Generator().manual_seed(0))
    assert sparsity_of(out) == pytest.approx(target, abs=0.01)


@pytest.mark.parametrize("zero_fraction", [0.0, 0.3, 0.6, 0.8, 0.9])
@pytest.mark.parametrize("target", [0.85, 0.95])
def test_achieved_sparsity_with_exact_zeros(zero_fraction: float, target: float) -> None:
    g = lognormal_tensor(200_000, -8.0, 2.0, seed=7)
    g[: int(zero_fraction * g.numel())] = 0
    g = g[torch.randperm(g.numel(), generator=torch.Generator().manual_seed(1))]
    out = stochastic_prune(g, target, generator=torch.Generator().manual_seed(0))
    if zero_fraction >= target:
        assert out is g
    else:
        assert sparsity_of(out) == pytest.approx(target, abs=0.01)
    assert torch.all(out[g == 0] == 0)


def test_already_sparse_enough_is_returned_unchanged() -> None:
    g = lognormal_tensor(10_000, 0.0, 1.0, seed=3)
    g[:9_000] = 0
    assert stochastic_prune(g, 0.85) is g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_unbiased_over_many_draws(dtype: torch.dtype) -> None:
    """Each entry's mean over N draws is within sampling error of the entry (z-scores).

    The N draws are one call on N stacked copies: the copies have the same statistics, so
    the same tau, and every copy draws independently.
    """
    n, draws = 2_000, 2_000
    g = lognormal_tensor(n, -4.0, 1.5, seed=11, dtype=dtype)
    tau = threshold_of(g.repeat(draws), 0.85)
    out = stochastic_prune(g.repeat(draws, 1), 0.85, generator=torch.Generator().manual_seed(5))
    assert out.dtype == dtype
    values, pruned = g.to(torch.float64), out.to(torch.float64)
    tau_in_dtype = float(torch.tensor(tau).to(dtype))
    below = values.abs() < tau_in_dtype
    assert int(below.sum()) > n // 2
    variance = torch.where(below, tau_in_dtype * values.abs() - values**2, 0.0)
    z = (pruned.mean(0) - values)[below] / torch.sqrt(variance[below] / draws)
    assert abs(float(z.mean()) * math.sqrt(z.numel())) < 3.0, "aggregate bias beyond 3 standard errors"
    assert float((z**2).mean()) == pytest.approx(1.0, abs=0.15), "per-entry errors not at sampling noise"
    assert float((z.abs() > 4.5).to(torch.float64).mean()) < 1e-3
    assert torch.equal(pruned[:, ~below], values[~below].expand(draws, -1))


def test_only_small_entries_change_and_become_zero_or_tau() -> None:
    g = lognormal_tensor(100_000, -3.0, 2.0, seed=4)
    g[::7] = 0
    tau = threshold_of(g, 0.9)
    out = stochastic_prune(g, 0.9, generator=torch.Generator().manual_seed(2))
    big = g.abs() >= tau
    assert torch.equal(out[big], g[big]), "entries at or above the threshold must be untouched"
    assert torch.all(out[g == 0] == 0)
    small = out[~big & (g != 0)]
    assert torch.all((small == 0) | torch.isclose(small.abs(), torch.tensor(tau, dtype=small.dtype), rtol=1e-6))
    assert torch.all(torch.sign(small[small != 0]) == torch.sign(g[~big & (g != 0)][small != 0]))


def test_seeded_runs_are_reproducible() -> None:
    g = lognormal_tensor(50_000, -6.0, 2.0, seed=9)
    first = stochastic_prune(g, 0.85, generator=torch.Generator().manual_seed(42))
    second = stochastic_prune(g, 0.85, generator=torch.Generator().manual_seed(42))
    other = stochastic_prune(g, 0.85, generator=torch.Generator().manual_seed(43))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dtype_and_shape_are_preserved(dtype: torch.dtype) -> None:
    g = lognormal_tensor(8 * 16 * 12 * 12, -5.0, 2.0, seed=10, dtype=dtype).view(8, 16, 12, 12)
    out = stochastic_prune(g, 0.85, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.shape == g.shape and out.device == g.device
    assert sparsity_of(out) == pytest.approx(0.85, abs=0.01)
    survivors = out != 0
    smallest_kept = out[survivors].abs().min()
    assert torch.equal(out[g.abs() > smallest_kept], g[g.abs() > smallest_kept]), "large entries bit-exact"


def test_non_finite_or_unfittable_gradients_pass_through() -> None:
    g = lognormal_tensor(1_000, 0.0, 1.0, seed=1)
    g[3] = math.inf
    assert stochastic_prune(g, 0.85) is g
    single = torch.zeros(100)
    single[5] = 1.0
    assert stochastic_prune(single, 0.85) is single


@pytest.mark.parametrize("method", ["stochastic", "magnitude"])
def test_cached_threshold_keeps_overflow_visible(method: str) -> None:
    """With a cached tau no fit sees the tensor: inf/nan must still survive the rule."""
    model = make_model()
    with GradientPruner(model, 0.85, include="conv2", refresh_every=100, method=method) as pruner:
        weight_grads(model)
        attach_output_grad_transform(model.fc, lambda g: g.index_put((torch.tensor([0]),), torch.tensor(math.nan)))
        grads = weight_grads(model)
        assert pruner.stats()["conv2"].fits == 1
    assert torch.isnan(grads["conv2.weight"]).any() and torch.isnan(grads["conv1.weight"]).any()


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, math.nan])
def test_bad_sparsity_is_rejected(sparsity: float) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        stochastic_prune(torch.ones(10), sparsity)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(TypeError, match="float"):
        stochastic_prune(torch.ones(10, dtype=torch.int32), 0.5)
    with pytest.raises(TypeError, match="Generator"):
        stochastic_prune(torch.ones(10), 0.5, generator=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Tensor"):
        stochastic_prune([1.0, 2.0], 0.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- a model


class TinyCNN(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def make_model(inplace: bool = False) -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN(inplace)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 5, (16,), generator=gen)


def weight_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    x, y = batch()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def grads_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_pruner_hooks_fire_and_hit_the_target() -> None:
    model = make_model()
    seen: list[torch.Tensor] = []
    pruner = GradientPruner(model, 0.85, layer_types=(nn.Conv2d,), generator=torch.Generator().manual_seed(0))
    attach_output_grad_transform(model.conv2, lambda g: seen.append(g.clone()))  # runs after the pruner
    weight_grads(model)
    stats = pruner.stats()
    assert list(stats) == ["conv1", "conv2"]
    for s in stats.values():
        assert isinstance(s, LayerStats)
        assert s.calls == 1 and s.pruned_calls == 1 and s.fits == 1
        assert math.isfinite(s.mu) and s.sigma > 0 and s.threshold == pytest.approx(s.alpha * math.exp(s.mu))
        assert s.mean_sparsity == pytest.approx(0.85, abs=0.03)
    assert sparsity_of(seen[0]) == pytest.approx(stats["conv2"].last_sparsity)
    assert 0 < stats["conv2"].zero_fraction < 0.85, "ReLU zeros are counted before pruning"


def test_removal_restores_exact_gradients() -> None:
    model = make_model()
    exact = weight_grads(model)
    pruner = GradientPruner(model, 0.9)
    pruned = weight_grads(model)
    assert not grads_equal(exact, pruned)
    pruner.remove()
    pruner.remove()
    assert not pruner.attached
    assert grads_equal(exact, weight_grads(model))


def test_context_manager_attaches_and_detaches() -> None:
    model = make_model()
    exact = weight_grads(model)
    with GradientPruner(model, 0.9, include="conv") as pruner:
        assert pruner.attached and set(pruner.stats()) == {"conv1", "conv2"}
        assert not grads_equal(exact, weight_grads(model))
    assert not pruner.attached
    assert grads_equal(exact, weight_grads(model))


def test_inplace_relu_after_conv_sees_the_conv_output_gradient() -> None:
    plain, inplace = make_model(inplace=False), make_model(inplace=True)
    grads = []
    for model in (plain, inplace):
        with GradientPruner(model, 0.85, generator=torch.Generator().manual_seed(3)) as pruner:
            grads.append(weight_grads(model))
            assert all(s.pruned_calls == 1 for s in pruner.stats().values())
    assert grads_equal(grads[0], grads[1])


def test_warmup_and_refresh_schedule() -> None:
    model = make_model()
    exact = weight_grads(model)
    pruner = GradientPruner(model, 0.85, warmup_steps=2, refresh_every=3)
    for _ in range(2):
        assert grads_equal(exact, weight_grads(model)), "warm-up steps are full precision"
    assert all(math.isnan(s.mu) and s.pruned_calls == 0 for s in pruner.stats().values())
    for _ in range(5):
        weight_grads(model)
    for s in pruner.stats().values():
        assert (s.calls, s.pruned_calls, s.fits) == (7, 5, 2)


def test_cached_threshold_is_reused_between_refreshes() -> None:
    model = make_model()
    pruner = GradientPruner(model, 0.85, include="conv2", refresh_every=100)
    weight_grads(model)
    tau = pruner.stats()["conv2"].threshold
    with torch.no_grad():
        model.fc.weight.mul_(10.0)  # gradients grow 10x: a fixed tau now prunes far less
    weight_grads(model)
    stats = pruner.stats()["conv2"]
    assert stats.threshold == tau and stats.fits == 1
    assert stats.last_sparsity < 0.7


def test_disabled_pruner_leaves_gradients_exact() -> None:
    model = make_model()
    exact = weight_grads(model)
    pruner = GradientPruner(model, 0.9, enabled=False)
    assert grads_equal(exact, weight_grads(model))
    pruner.enabled = True
    assert not grads_equal(exact, weight_grads(model))
    assert all(s.calls == 1 for s in pruner.stats().values())


def test_no_grad_forward_is_untouched() -> None:
    model = make_model()
    with GradientPruner(model, 0.9) as pruner, torch.no_grad():
        model(batch()[0])
    assert all(s.calls == 0 for s in pruner.stats().values())


@pytest.mark.parametrize("method", ["magnitude", "topk"])
def test_baseline_methods_zero_without_rescaling(method: str) -> None:
    model = make_model()
    seen: list[torch.Tensor] = []
    original: list[torch.Tensor] = []
    attach_output_grad_transform(model.conv1, lambda g: original.append(g.clone()))
    with GradientPruner(model, 0.85, include="conv1", method=method):
        attach_output_grad_transform(model.conv1, lambda g: seen.append(g.clone()))
        weight_grads(model)
    kept = seen[0] != 0
    assert torch.equal(seen[0][kept], original[0][kept])
    tolerance = 1e-4 if method == "topk" else 0.03
    assert sparsity_of(seen[0]) == pytest.approx(0.85, abs=tolerance)


def test_summary_is_a_table_of_every_layer() -> None:
    model = make_model()
    with GradientPruner(model, 0.85) as pruner:
        weight_grads(model)
    text = pruner.summary()
    assert "target=0.850" in text
    for name in ("conv1", "conv2", "fc"):
        assert any(line.startswith(name) for line in text.splitlines())


@pytest.mark.parametrize("kwargs,error", [
    ({"sparsity": 1.0}, ValueError), ({"sparsity": "high"}, TypeError),
    ({"warmup_steps": -1}, ValueError), ({"refresh_every": 0}, ValueError),
    ({"refresh_every": 1.5}, TypeError), ({"method": "random"}, ValueError),
    ({"enabled": "yes"}, TypeError), ({"min_cosine": 1.0}, ValueError), ({"min_cosine": "0.9"}, TypeError),
    ({"min_cosine": 0.9, "method": "magnitude"}, ValueError),
    ({"global_budget": 1}, TypeError), ({"global_budget": True, "method": "topk"}, ValueError),
    ({"global_budget": True, "max_sparsity": 0.8}, ValueError), ({"max_sparsity": 1.0}, ValueError),
])
def test_config_validation(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        PrunerConfig(**kwargs)
    with pytest.raises(error):
        GradientPruner(make_model(), **kwargs)


def test_config_is_frozen_and_selection_errors_are_clear() -> None:
    config = PrunerConfig()
    with pytest.raises(AttributeError):
        config.sparsity = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="matched"):
        GradientPruner(make_model(), include="no_such_layer")


def test_noise_capped_threshold_meets_the_ratio_exactly() -> None:
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(20000, generator=gen).mul(2).exp() * torch.randn(20000, generator=gen).sign()
    g[:500] = 0.0
    for ratio in (0.001, 0.05, 0.2):
        tau = _noise_capped_tau(g, 1e12, ratio)
        assert added_noise_ratio(g, tau) == pytest.approx(ratio, rel=1e-6)
        assert added_noise_ratio(g, tau * 1.01) > ratio
    assert _noise_capped_tau(g, 1e-6, 0.2) == 1e-6  # never raised above the sparsity's threshold
    # The ratio is what a stochastic prune at tau really adds, on average:
    tau = _noise_capped_tau(g, 1e12, 0.1)
    draws = torch.stack([_stochastic_draw(g, tau, seed) for seed in range(200)])
    added = float(((draws - g) ** 2).sum(dim=1).mean() / (g * g).sum())
    assert added == pytest.approx(0.1, rel=0.05)


def _capped_by_full_sort(g: torch.Tensor, tau: float, max_ratio: float) -> float:
    """The noise-floor threshold by sorting every magnitude: the definition the bucketed search must match."""
    a = torch.sort(g.detach().abs().to(torch.float64).flatten()).values
    a = a[torch.isfinite(a) & (a > 0)]
    if a.numel() == 0:
        return tau
    budget = max_ratio * float((a * a).sum())
    prefix_abs, prefix_sq = torch.cumsum(a, 0), torch.cumsum(a * a, 0)
    noise_at = torch.cat([torch.zeros(1, dtype=torch.float64), a[1:] * prefix_abs[:-1] - prefix_sq[:-1]])
    k = max(int(torch.searchsorted(noise_at, torch.tensor([budget], dtype=torch.float64), right=True)[0]) - 1, 0)
    capped = (budget + float(prefix_sq[k])) / float(prefix_abs[k])
    if k + 1 < a.numel():
        capped = min(capped, float(a[k + 1]))
    return min(tau, capped)


def _awkward_gradients() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(21)
    wide = torch.randn(50_000, generator=gen).mul(3).exp() * torch.randn(50_000, generator=gen).sign()
    wide[::3] = 0.0
    repeated = torch.randint(1, 6, (20_000,), generator=gen).float() * 1e-3  # many exact ties
    with_specials = wide[:5_000].clone()
    with_specials[:10] = math.inf
    with_specials[10:20] = math.nan
    return [wide, repeated, with_specials, wide[:7].clone(), torch.full((1000,), 2e-4),
            wide.half().view(50, 1000), torch.tensor([0.0, 0.0, 3.0])]


@pytest.mark.parametrize("ratio", [1e-4, 0.01, 0.0957, 0.3, 5.0])
@pytest.mark.parametrize("tau", [1e-5, 0.01, 1.0, 1e12])
def test_bucketed_noise_cap_equals_the_full_sort(ratio: float, tau: float) -> None:
    for g in _awkward_gradients():
        assert _noise_capped_tau(g, tau, ratio) == pytest.approx(_capped_by_full_sort(g, tau, ratio), rel=1e-9)


def _stochastic_draw(g: torch.Tensor, tau: float, seed: int) -> torch.Tensor:
    from gradtools.prune import _apply_stochastic
    return _apply_stochastic(g.double(), tau, torch.Generator().manual_seed(seed))


def test_min_cosine_floor_caps_each_layers_noise() -> None:
    exact: dict[str, torch.Tensor] = {}
    plain = make_model()
    attach_output_grad_transform(plain.conv2, lambda g: exact.__setitem__("conv2", g.clone()))
    weight_grads(plain)  # conv2's incoming gradient does not depend on pruning conv2 itself
    model = make_model()
    floor = GradientPruner(model, 0.95, layer_types=(nn.Conv2d,), min_cosine=0.99,
                           generator=torch.Generator().manual_seed(0))
    weight_grads(model)
    stats = floor.stats()["conv2"]
    assert added_noise_ratio(exact["conv2"], stats.threshold) <= (0.99 ** -2 - 1) * (1 + 1e-9)
    assert stats.last_sparsity < 0.9, "a floor this tight must prune less than the target"
    assert stats.alpha == pytest.approx(stats.threshold / math.exp(stats.mu))


def test_floor_applies_only_to_the_chosen_layers() -> None:
    model = make_model()
    pruner = GradientPruner(model, 0.95, layer_types=(nn.Conv2d,), min_cosine=0.99, floor=r"conv2$",
                            generator=torch.Generator().manual_seed(0))
    weight_grads(model)
    stats = pruner.stats()
    assert stats["conv2"].floor and not stats["conv1"].floor
    assert stats["conv2"].last_sparsity < 0.9, "the floor binds on conv2"
    assert stats["conv1"].last_sparsity > 0.9, "conv1 has no floor and prunes to its target"
    assert "conv2 *" in pruner.summary()
    with pytest.raises(ValueError, match="give min_cosine"):
        GradientPruner(make_model(), 0.9, floor="conv2")
    with pytest.raises(ValueError, match="matched none of the pruned"):
        GradientPruner(make_model(), 0.9, layer_types=(nn.Conv2d,), include="conv1", min_cosine=0.9, floor="conv2")


def test_global_budget_hands_the_floors_share_to_the_other_layers() -> None:
    """conv2 runs first in backward and is held back by a tight floor; conv1 is re-targeted
    so that both together reach the target (counted in elements, both are 8x16x16)."""
    model = make_model()
    pruner = GradientPruner(model, 0.8, layer_types=(nn.Conv2d,), min_cosine=0.995, floor=r"conv2$",
                            global_budget=True, max_sparsity=0.97, generator=torch.Generator().manual_seed(0))
    zeros = {}
    for name in ("conv1", "conv2"):
        attach_output_grad_transform(getattr(model, name), lambda g, n=name: zeros.__setitem__(n, sparsity_of(g)))
    for _ in range(3):
        weight_grads(model)
    stats = pruner.stats()
    held_back = stats["conv2"].last_sparsity
    assert held_back < 0.7, "the floor must bind for this test to mean anything"
    expected = min(2 * 0.8 - held_back, 0.97)
    assert stats["conv1"].target == pytest.approx(expected, abs=1e-6)
    assert stats["conv2"].target == pytest.approx(0.8)
    assert zeros["conv1"] == pytest.approx(expected, abs=0.05)
    # Without the budget conv1 stays at the plain target.
    plain = make_model()
    fixed = GradientPruner(plain, 0.8, layer_types=(nn.Conv2d,), min_cosine=0.995, floor=r"conv2$",
                           generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        weight_grads(plain)
    assert fixed.stats()["conv1"].target == pytest.approx(0.8)


def test_max_sparsity_only_binds_the_global_budget() -> None:
    assert GradientPruner(make_model(), 0.98).config.sparsity == 0.98  # above the default cap: fine


def test_global_budget_never_aims_above_max_sparsity() -> None:
    model = make_model()
    pruner = GradientPruner(model, 0.9, layer_types=(nn.Conv2d,), min_cosine=0.9999, floor=r"conv2$",
                            global_budget=True, max_sparsity=0.92, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        weight_grads(model)
    assert pruner.stats()["conv1"].target == pytest.approx(0.92)
