"""GradientQuantizer: hooks, per-layer scaling and format choice, schedule, composition."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from gradtools._hooks import attach_output_grad_transform
from gradtools.fp import FPFormat, best_format, quantize_fp
from gradtools.prune import GradientPruner
from gradtools.quantize import GradientQuantizer, log2_mean, log2_moments


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 6 * 6, 3))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def backward(model: nn.Module, loss_scale: float = 1.0, seed: int = 1) -> None:
    x, y = batch(seed)
    model.zero_grad(set_to_none=True)
    (nn.functional.cross_entropy(model(x), y) * loss_scale).backward()


def weight_grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


class Recorder:
    """A transform that stores what it sees (attach before/after the tool under test)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, grad: torch.Tensor) -> None:
        self.seen.append(grad.detach().clone())


def test_log2_moments_and_mean() -> None:
    g = torch.tensor([0.0, 0.25, -1.0, 4.0, float("inf")])
    mu2, sigma2, count = log2_moments(g)
    assert float(count) == 3 and float(mu2) == 0.0
    assert float(sigma2) == pytest.approx((8 / 3) ** 0.5)
    assert float(log2_mean(g)) == 0.0
    assert float(log2_moments(torch.zeros(4))[0]) == 0.0


def test_gradients_are_on_the_scaled_format_grid() -> None:
    model = small_net()
    conv = model[2]
    before, after = Recorder(), Recorder()
    attach_output_grad_transform(conv, before)
    quantizer = GradientQuantizer(model, bits=8, fmt=FPFormat.E4M3FN, refresh_every=1)
    attach_output_grad_transform(conv, after)
    backward(model)
    raw, quantized = before.seen[0], after.seen[0]
    stats = quantizer.stats()["2"]
    assert stats.scale_exp == round(FPFormat.E4M3FN.log2_centre - float(log2_moments(raw)[0]))
    on_grid = quantized * 2.0 ** stats.scale_exp
    assert torch.equal(quantize_fp(on_grid, FPFormat.E4M3FN), on_grid)
    assert not torch.equal(quantized, raw)
    rel = ((quantized - raw).abs() / raw.abs().clamp_min(1e-30))[raw != 0]
    assert float(rel.max()) <= 2.0 ** -4  # half an ulp of a 3-bit mantissa
    assert stats.rel_error == pytest.approx(float(rel.mean()), rel=1e-6)
    assert stats.underflow_fraction == 0.0 and stats.calls == 1


def test_auto_format_follows_the_measured_spread() -> None:
    model = small_net()
    recorders = {name: Recorder() for name in ("0", "2", "5")}
    for name, rec in recorders.items():
        attach_output_grad_transform(dict(model.named_modules())[name], rec)
    quantizer = GradientQuantizer(model, bits=6, refresh_every=1)
    backward(model)
    for name, stats in quantizer.stats().items():
        sigma2 = float(log2_moments(recorders[name].seen[0])[1])
        assert stats.sigma2 == pytest.approx(sigma2, rel=1e-6)
        assert stats.fmt == best_format(sigma2, 6)
    assert "GradientQuantizer: bits=6 fmt=auto" in quantizer.summary()
    assert all(name in quantizer.summary() for name in ("0", "2", "5"))


def test_refresh_schedule_and_frozen_stats() -> None:
    model = small_net()
    quantizer = GradientQuantizer(model, bits=6, refresh_every=3)
    for step in range(7):
        backward(model, seed=step)
    stats = quantizer.stats()["0"]
    assert (stats.calls, stats.refreshes) == (7, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.calls = 0  # type: ignore[misc]


def test_remove_and_context_manager_restore_exact_gradients() -> None:
    reference = small_net()
    backward(reference)
    exact = weight_grads(reference)
    model = small_net()
    with GradientQuantizer(model, bits=5) as quantizer:
        backward(model)
        assert any(not torch.equal(a, b) for a, b in zip(weight_grads(model), exact))
    backward(model)
    assert all(torch.equal(a, b) for a, b in zip(weight_grads(model), exact))
    quantizer.remove()  # twice is fine


def test_per_layer_scaling_rescues_tiny_gradients() -> None:
    reference = small_net()
    backward(reference, loss_scale=1e-12)
    exact = weight_grads(reference)[0]
    plain = small_net()
    with GradientQuantizer(plain, bits=8, fmt=FPFormat.E4M3FN, scaling="none", refresh_every=1) as q:
        backward(plain, loss_scale=1e-12)
        stats = q.stats()  # the classifier's gradient underflows; nothing reaches the convs
        assert stats["5"].underflow_fraction == 1.0 and stats["0"].zero_fraction == 1.0
    assert float(weight_grads(plain)[0].abs().max()) == 0.0
    scaled = small_net()
    with GradientQuantizer(scaled, bits=8, fmt=FPFormat.E4M3FN, refresh_every=1):
        backward(scaled, loss_scale=1e-12)
    got = weight_grads(scaled)[0]
    assert float((got - exact).norm() / exact.norm()) < 0.05


def test_stochastic_rounding_is_seeded_and_unbiased_per_layer() -> None:
    runs = []
    for seed in (3, 3, 4):
        model = small_net()
        with GradientQuantizer(model, bits=4, rounding="stochastic", generator=torch.Generator().manual_seed(seed)):
            backward(model)
        runs.append(weight_grads(model))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert any(not torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_pruner_first_then_quantizer_gives_sparse_on_grid_gradients() -> None:
    """Attach order is run order: prune (on the exact gradient), then quantize."""
    model = small_net()
    conv = model[0]
    GradientPruner(model, 0.6, generator=torch.Generator().manual_seed(0))
    quantizer = GradientQuantizer(model, bits=6, refresh_every=1)
    final = Recorder()
    attach_output_grad_transform(conv, final)
    backward(model)
    g = final.seen[0]
    assert float((g == 0).float().mean()) >= 0.5
    stats = quantizer.stats()["0"]
    on_grid = g * 2.0 ** stats.scale_exp
    assert torch.equal(quantize_fp(on_grid, stats.fmt), on_grid)


def test_quantizer_first_leaves_off_grid_values() -> None:
    """The other order: the pruner's +-tau entries are not on the format's grid."""
    model = small_net()
    conv = model[0]
    quantizer = GradientQuantizer(model, bits=6, refresh_every=1)
    GradientPruner(model, 0.6, generator=torch.Generator().manual_seed(0))
    final = Recorder()
    attach_output_grad_transform(conv, final)
    backward(model)
    stats = quantizer.stats()["0"]
    on_grid = final.seen[0] * 2.0 ** stats.scale_exp
    assert not torch.equal(quantize_fp(on_grid, stats.fmt), on_grid)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(bits=8, fmt=FPFormat(3, 2)), ValueError, "bits=6"),
    (dict(bits=8, fmt=3), TypeError, "fmt"),
    (dict(bits=8, fmt="e9m9x"), ValueError, "unknown format"),
    (dict(bits=1), ValueError, "bits"),
    (dict(scaling="global"), ValueError, "scaling"),
    (dict(rounding="down"), ValueError, "rounding"),
    (dict(refresh_every=0), ValueError, "refresh_every"),
    (dict(refresh_every=1.5), TypeError, "refresh_every"),
    (dict(include="no_such_layer"), ValueError, "matched"),
    (dict(generator=0), TypeError, "generator"),
])
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        GradientQuantizer(small_net(), **kwargs)


def test_format_by_name_and_layer_selection() -> None:
    model = small_net()
    quantizer = GradientQuantizer(model, fmt="e5m2", layer_types=(nn.Conv2d,))
    assert list(quantizer.stats()) == ["0", "2"]
    assert all(s.fmt is FPFormat.E5M2 for s in quantizer.stats().values())


def test_max_scaling_never_saturates() -> None:
    model = small_net()
    before, after = Recorder(), Recorder()
    attach_output_grad_transform(model[0], before)
    quantizer = GradientQuantizer(model, bits=5, fmt=FPFormat(3, 1), scaling="max", refresh_every=1)
    attach_output_grad_transform(model[0], after)
    backward(model, loss_scale=1e-9)
    raw, got = before.seen[0], after.seen[0]
    stats = quantizer.stats()["0"]
    assert stats.saturated_fraction == 0.0
    amax = float(raw.abs().max())
    assert FPFormat(3, 1).max_normal / 2 < amax * 2.0 ** stats.scale_exp <= FPFormat(3, 1).max_normal
    top = raw.abs().argmax()
    assert abs(float(got.flatten()[top] - raw.flatten()[top])) <= 0.25 * amax  # 1-bit mantissa
