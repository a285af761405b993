"""The accounting the gradient-pruning benchmarks report: zeros the conv backward really
receives (benchmarks/gradprune_train.py ZeroCounter) and the multiply-add weights of the
paired report (benchmarks/gradprune_report.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from gradprune_report import backward_macs  # noqa: E402
from gradprune_train import ZeroCounter, build_pruners, parse_overrides, planned_runs, settings_key  # noqa: E402

from gradtools import GradientPruner  # noqa: E402


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def step(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 1, 12, 12, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def test_counter_sees_the_pruned_gradient_and_counts_unpruned_layers_as_dense() -> None:
    model = small_cnn()
    pruner = GradientPruner(model, 0.85, layer_types=(nn.Conv2d,), include=lambda n, _m: n != "6",
                            generator=torch.Generator().manual_seed(0))
    counter = ZeroCounter(model, (nn.Conv2d,), skip_steps=1)  # after the pruner: sees its output
    for seed in range(3):
        step(model, seed)
    report = counter.report()
    stats = pruner.stats()
    for name in ("0", "3"):
        # over the 2 counted steps; the pruner's mean covers all 3 pruned steps
        assert report["layer_sparsity"][name] == pytest.approx(stats[name].mean_sparsity, abs=0.03)
        assert report["layer_sparsity"][name] > 0.7
    assert report["layer_sparsity"]["6"] == 0.0, "BN makes the unpruned conv's output gradient dense"
    elements = report["layer_elements_per_step"]
    assert elements == {"0": 16 * 8 * 144, "3": 16 * 8 * 144, "6": 16 * 8 * 144}
    expected = sum(report["layer_sparsity"][n] * elements[n] for n in elements) / sum(elements.values())
    assert report["overall_sparsity"] == pytest.approx(expected)
    assert report["overall_sparsity"] == pytest.approx(2 / 3 * stats["0"].mean_sparsity, abs=0.03)


def test_counter_attached_first_would_see_the_dense_gradient() -> None:
    """Why ZeroCounter must be attached after the pruner: hooks run in attachment order."""
    model = small_cnn()
    counter = ZeroCounter(model, (nn.Conv2d,), skip_steps=0)
    pruner = GradientPruner(model, 0.85, layer_types=(nn.Conv2d,))
    step(model, 0)
    assert counter.report()["overall_sparsity"] == 0.0
    assert all(s.last_sparsity > 0.7 for s in pruner.stats().values())


def test_counter_skips_the_warmup_steps() -> None:
    model = small_cnn()
    counter = ZeroCounter(model, (nn.Conv2d,), skip_steps=2)
    step(model, 0)
    step(model, 1)
    assert counter.report() == {}
    step(model, 2)
    assert set(counter.report()["layer_sparsity"]) == {"0", "3", "6"}


def test_backward_macs_count_the_input_gradient_only_where_it_is_needed() -> None:
    macs = backward_macs("vgg16", 8)
    assert len(macs) == 13
    # first conv: the input image needs no gradient, so only the weight gradient: 28*28*8 outputs x 1*3*3
    assert macs["features.0"] == 28 * 28 * 8 * 9
    # second conv: weight and input gradient, 28*28*8 outputs x 8*3*3 each
    assert macs["features.3"] == 2 * 28 * 28 * 8 * 72
    # last block runs at 1x1 after four 2x2 max-pools of 28 (28 -> 14 -> 7 -> 3 -> 1)
    assert macs["features.40"] == 2 * 1 * 64 * 64 * 9


def test_layer_sparsity_overrides_parse_and_reject_garbage() -> None:
    assert parse_overrides(None) == []
    assert parse_overrides([r"features\.(3|10)$=0.95", "conv=0.5"]) == [(r"features\.(3|10)$", 0.95), ("conv", 0.5)]
    for bad in ("0.95", "=0.95", "conv=high"):
        with pytest.raises(ValueError):
            parse_overrides([bad])


def test_noise_floor_applies_to_the_base_group_only() -> None:
    args = argparse.Namespace(exclude="^6$", layer_sparsity=["^0$=0.9"], warmup=0, layers="conv",
                              refresh_every=1, min_cosine=0.92, seed=0, floor=None, global_budget=False,
                              max_sparsity=0.95, device="cpu")
    base, override = build_pruners(small_cnn(), "stochastic", 0.95, args)
    assert list(base.stats()) == ["3"] and list(override.stats()) == ["0"]
    assert base.config.min_cosine == 0.92 and base.config.sparsity == 0.95
    assert override.config.min_cosine is None and override.config.sparsity == 0.9
    assert build_pruners(small_cnn(), "none", 0.95, args) == []
    magnitude = build_pruners(small_cnn(), "magnitude", 0.85, args)
    assert all(p.config.min_cosine is None for p in magnitude)


def test_global_budget_pruner_has_the_floor_on_the_chosen_layers() -> None:
    args = argparse.Namespace(exclude=None, layer_sparsity=None, warmup=0, layers="conv", refresh_every=1,
                              min_cosine=0.92, seed=0, floor="^3$", global_budget=True, max_sparsity=0.95,
                              device="cpu")
    (pruner,) = build_pruners(small_cnn(), "stochastic", 0.85, args)
    assert pruner.config.global_budget and pruner.config.max_sparsity == 0.95
    assert {name: s.floor for name, s in pruner.stats().items()} == {"0": False, "3": True, "6": False}


def run_args(**changes: object) -> argparse.Namespace:
    base = dict(archs=["resnet18"], sparsities=[0.85, 0.95], baselines=["topk"], baseline_sparsities=[0.95],
                no_unpruned=False, unpruned_only=False, layers="conv", width=8, train_size=1000, epochs=2,
                batch=128, seed=0, warmup=20, refresh_every=1, lr=None, lr_warmup=20, exclude=None,
                layer_sparsity=None, min_cosine=None, floor=None, global_budget=False, max_sparsity=0.95,
                device="cpu")
    return argparse.Namespace(**{**base, **changes})


def test_planned_runs_split_unpruned_and_pruned_between_processes() -> None:
    everything = planned_runs(run_args())
    assert everything == [("resnet18", "none", 0.0), ("resnet18", "stochastic", 0.85),
                          ("resnet18", "stochastic", 0.95), ("resnet18", "topk", 0.95)]
    assert planned_runs(run_args(unpruned_only=True)) == everything[:1]
    assert planned_runs(run_args(no_unpruned=True)) == everything[1:]


def test_a_gpu_run_never_resumes_or_pairs_with_a_cpu_file() -> None:
    cpu, cuda = settings_key(run_args()), settings_key(run_args(device="cuda"))
    assert "device" not in cpu, "CPU settings stay as older result files wrote them"
    assert cuda == {**cpu, "device": "cuda"}
