"""Latency-aware selection's decisions with injected timings (no timed assertions), and the
alternated-timing helpers with a fake clock."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from zapopt.errors import ZapoptError
from zapopt.latency import (
    MAX_ROUNDS,
    LatencySetting,
    LayerCost,
    latency_settings,
    select_by_latency,
    unmeasured,
)
from zapopt.optimize import ExactOnly, OptimizeConfig
from zapopt.timing import (
    WALL_TIME_BEST_OF, Spread, Timings, best_of_for, clock_for, lower_bound_rank, median_lower_bound, time_alternated,
)

OPS = {"a": "ZeroSkipConv", "b": "ZapConv", "c": "ZeroSkipConv", "d": "ZeroSkipConv"}
#: (native s, stock s): a saves 4 ms, b saves 1 ms, c is slower native, d ties.
LAYER_TIMES = {"a": (0.006, 0.010), "b": (0.004, 0.005), "c": (0.003, 0.002), "d": (0.002, 0.002)}
B1 = LatencySetting(1, None)
ROUNDS = 15


def alone(times: dict[str, tuple[float, float]]) -> Callable[[str], Timings]:
    """A fake per-layer timer: one paired run per layer, (native s, stock s)."""
    return lambda name: Timings({"native": (times[name][0],), "stock": (times[name][1],)})


def uniform(native: float, stock: float) -> Callable[[str], Timings]:
    """A fake per-layer timer giving every layer the same times."""
    return lambda name: Timings({"native": (native,), "stock": (stock,)})


def paired(ratios: Sequence[float], original: float = 0.010) -> Timings:
    """Paired rounds whose original / model ratios are ``ratios``."""
    return Timings({"original": tuple(original for _ in ratios), "model": tuple(original / r for r in ratios)})


def steady(ratio: float) -> Timings:
    return paired([ratio] * ROUNDS)


class ModelTimes:
    """A fake end-to-end timer: ``speed(kept, setting)`` gives the paired timings; records calls."""

    def __init__(self, speed: Callable[[frozenset[str], LatencySetting], Timings]) -> None:
        self.speed, self.calls = speed, []

    def __call__(self, kept: frozenset[str], setting: LatencySetting) -> Timings:
        self.calls.append((kept, setting))
        return self.speed(kept, setting)


def test_layers_not_faster_native_keep_their_stock_nodes() -> None:
    model = ModelTimes(lambda kept, s: steady(1.2))
    report = select_by_latency(OPS, alone(LAYER_TIMES), model)
    assert report.measured and report.native_layers == ["a", "b"]
    assert model.calls == [(frozenset({"a", "b"}), B1)]
    decisions = {d.name: d for d in report.layers}
    assert decisions["c"].reason == decisions["d"].reason == "stock nodes as fast or faster"
    assert decisions["a"].native_ms == pytest.approx(6.0) and decisions["a"].stock_ms == pytest.approx(10.0)
    assert decisions["a"].speedup == pytest.approx(10 / 6)
    assert decisions["a"].speedup_spread.median == pytest.approx(10 / 6)
    assert report.to_dict()["layers"][0]["speedup_spread"]["count"] == 1
    (check,) = report.model_checks
    assert check.native_layers == 2 and check.passed and check.speedup.median == pytest.approx(1.2)
    assert report.summary().startswith("kept 2 of 4 native layers: end to end 1.200x (IQR 1.200-1.200")
    assert "at batch 1, onnxruntime's default threads" in report.summary()


def test_a_tie_end_to_end_falls_back_to_the_original() -> None:
    """Exactly as fast as the original is not surely faster: the original graph is written."""
    model = ModelTimes(lambda kept, s: steady(1.0))
    report = select_by_latency(OPS, alone(LAYER_TIMES), model)
    assert report.native_layers == [] and not any(c.passed for c in report.model_checks)
    assert report.summary() == "no native layer pays on this machine: the output equals the original"


def test_a_candidate_faster_at_some_settings_only_says_so() -> None:
    """Surely faster on one thread, not on two: the original is written, and the summary
    tells the user which setting held it back."""
    one_thread, two_threads = LatencySetting(1, 1), LatencySetting(1, 2)
    model = ModelTimes(lambda kept, s: steady(1.2 if s == one_thread else 1.0))
    report = select_by_latency(OPS, alone(LAYER_TIMES), model, settings=(one_thread, two_threads))
    assert report.native_layers == []
    assert report.summary().startswith("no native layer pays on this machine: the output equals the original (")
    assert "surely faster at batch 1, 1 thread but never at batch 1, 2 threads" in report.summary()


def test_noise_decides_by_the_lower_bound_not_the_median() -> None:
    """Same median (1.05x); with 5 of 15 rounds below 1.0 the bound is below 1.0, with 3 it is not."""
    noisy = [0.97, 0.98, 0.99, 0.995, 0.999] + [1.05] * 5 + [1.2] * 5
    calm = [0.97, 0.98, 0.99] + [1.04, 1.045] + [1.05] * 5 + [1.2] * 5
    one = {"a": "ZeroSkipConv"}
    rejected = select_by_latency(one, uniform(0.001, 0.002), ModelTimes(lambda kept, s: paired(noisy)))
    accepted = select_by_latency(one, uniform(0.001, 0.002), ModelTimes(lambda kept, s: paired(calm)))
    assert rejected.native_layers == [] and rejected.model_checks[0].lower_bound == pytest.approx(0.995)
    assert rejected.model_checks[0].speedup.median == pytest.approx(1.05)
    assert accepted.native_layers == ["a"] and accepted.model_checks[0].lower_bound == pytest.approx(1.04)


def test_a_slower_model_drops_the_weaker_half_until_it_is_faster() -> None:
    # savings alone: a 4 ms, e 3 ms, c 1 ms, b 0.5 ms; b and c make the model slower
    times = {"a": (0.001, 0.005), "b": (0.004, 0.0045), "c": (0.002, 0.003), "e": (0.001, 0.004)}
    ops = {name: "ZeroSkipConv" for name in times}
    model = ModelTimes(lambda kept, s: steady(0.9 if {"b", "c"} & kept else 1.1))
    report = select_by_latency(ops, alone(times), model)
    assert [kept for kept, _ in model.calls] == [frozenset("abce"), frozenset("ae")]
    assert sorted(report.native_layers) == ["a", "e"]
    dropped = {d.name: d for d in report.layers if not d.native}
    assert set(dropped) == {"b", "c"} and all("dropped in round 1" in d.reason for d in dropped.values())
    assert [(c.round, c.native_layers, c.passed) for c in report.model_checks] == [(1, 4, False), (2, 2, True)]


def test_a_model_that_is_always_slower_ends_as_the_original_within_the_round_limit() -> None:
    ops = {f"l{i}": "ZeroSkipConv" for i in range(20)}
    model = ModelTimes(lambda kept, s: steady(0.8))
    report = select_by_latency(ops, uniform(0.001, 0.002), model)
    assert report.native_layers == []
    assert len(model.calls) == MAX_ROUNDS  # 20, 10, 5, 2 layers, then the original
    assert [len(kept) for kept, _ in model.calls] == [20, 10, 5, 2]
    assert all("original graph" in d.reason for d in report.layers if d.name in model.calls[-1][0])
    text = report.format_table()
    assert "0.800x" in text and "no native layer pays" in text


def test_one_layer_left_and_slower_ends_with_no_native_layer() -> None:
    report = select_by_latency({"a": "ZeroSkipConv"}, uniform(0.001, 0.002), ModelTimes(lambda k, s: steady(0.5)))
    assert report.native_layers == [] and len(report.model_checks) == 1
    assert "0.500x" in report.format_table()


def test_nothing_faster_needs_no_model_timing() -> None:
    def model(kept: frozenset[str], setting: LatencySetting) -> Timings:
        raise AssertionError("no native layer left to time")

    report = select_by_latency({"c": "ZeroSkipConv"}, alone(LAYER_TIMES), model)
    assert report.native_layers == [] and report.model_checks == []


def test_every_setting_must_pass_and_a_failed_one_stops_the_round() -> None:
    """Faster at batch 1 but slower at batch 8 with layer b: b goes, and the round's later
    settings are not measured once one failed."""
    settings = latency_settings((8, 1), (2, 1))
    assert settings == (LatencySetting(1, 2), LatencySetting(1, 1), LatencySetting(8, 2), LatencySetting(8, 1))
    model = ModelTimes(lambda kept, s: steady(0.95 if s.batch == 8 and "b" in kept else 1.1))
    report = select_by_latency({"a": "ZeroSkipConv", "b": "ZapConv"}, alone(LAYER_TIMES), model,
                               settings=settings)
    assert report.native_layers == ["a"]
    assert [(len(kept), s) for kept, s in model.calls] == [(2, settings[0]), (2, settings[1]), (2, settings[2]),
                                                           (1, settings[0]), (1, settings[1]), (1, settings[2]),
                                                           (1, settings[3])]
    assert [c.setting.label for c in report.deciding_checks] == ["batch 1, 2 threads", "batch 1, 1 thread",
                                                                 "batch 8, 2 threads", "batch 8, 1 thread"]
    assert report.to_dict()["settings"][2] == {"batch": 8, "threads": 2, "clock": "wall time"}


def test_a_layer_faster_alone_but_costly_in_the_model_goes_back_before_the_end_to_end_run() -> None:
    """b is 1.25x faster alone, but inside the model its stock nodes run faster (e.g. in a layout chain)
    and it forces layout reorders: it goes back; a's saving in the model ranks the rest."""
    costs = {"a": LayerCost(6.0, 9.0, 0.5), "b": LayerCost(4.0, 4.2, 0.4)}
    seen: list[frozenset[str]] = []

    def layer_costs(kept: frozenset[str]) -> dict[str, LayerCost]:
        seen.append(kept)
        return {name: costs[name] for name in kept}

    model = ModelTimes(lambda kept, s: steady(1.1))
    report = select_by_latency(OPS, alone(LAYER_TIMES), model, layer_costs=layer_costs)
    assert seen == [frozenset("ab")] and [kept for kept, _ in model.calls] == [frozenset("a")]
    decisions = {d.name: d for d in report.layers}
    assert report.native_layers == ["a"] and "not in the model" in decisions["b"].reason
    assert "reorders 0.400 ms" in decisions["b"].reason and decisions["b"].in_model == costs["b"]
    assert decisions["a"].in_model.saving_ms == pytest.approx(2.5)
    assert "saves 2.500 ms in the model" in decisions["a"].reason
    assert report.to_dict()["layers"][0]["in_model"]["saving_ms"] == pytest.approx(2.5)


def test_the_in_model_saving_decides_which_half_is_dropped() -> None:
    """Alone, a saves the most; in the model (reorders) c does: c and d stay, a and b go."""
    times = {name: (0.001, 0.003) for name in "abcd"}
    times["a"] = (0.001, 0.010)
    costs = {"a": LayerCost(1.0, 1.2, 0.1), "b": LayerCost(1.0, 1.3, 0.0), "c": LayerCost(1.0, 3.0, 0.0),
             "d": LayerCost(1.0, 2.0, 0.0)}
    model = ModelTimes(lambda kept, s: steady(1.1 if kept <= {"c", "d"} else 0.9))
    report = select_by_latency({n: "ZeroSkipConv" for n in "abcd"}, alone(times), model,
                               layer_costs=lambda kept: {n: costs[n] for n in kept})
    assert sorted(report.native_layers) == ["c", "d"]


def test_layer_costs_without_the_stock_nodes_in_the_profile_send_it_back() -> None:
    report = select_by_latency({"a": "ZeroSkipConv"}, uniform(0.001, 0.002),
                               ModelTimes(lambda kept, s: steady(1.1)),
                               layer_costs=lambda kept: {"a": LayerCost(1.0, None, 0.0)})
    assert report.native_layers == [] and "not found in the profile" in report.layers[0].reason


def test_unmeasured_keeps_everything_and_says_why() -> None:
    report = unmeasured(OPS, "no library")
    assert not report.measured and report.native_layers == list(OPS)
    assert report.to_dict()["note"] == "no library" and "not measured (no library)" in report.format_table()
    assert report.summary() == "speed unmeasured: no library"


def test_a_layer_within_timing_noise_stays_stock() -> None:
    """Native 1.02x faster is within a shared machine's noise: kept stock, with that reason."""
    report = select_by_latency({"a": "ZeroSkipConv"}, uniform(0.0100, 0.0102),
                               ModelTimes(lambda kept, s: steady(1.1)))
    assert report.native_layers == [] and "within timing noise" in report.layers[0].reason


def test_selection_arguments_are_checked() -> None:
    with pytest.raises(ZapoptError, match="at least one batch size"):
        select_by_latency(OPS, alone(LAYER_TIMES), ModelTimes(lambda k, s: steady(1.1)), settings=())
    with pytest.raises(ZapoptError, match="max_rounds"):
        select_by_latency(OPS, alone(LAYER_TIMES), ModelTimes(lambda k, s: steady(1.1)), max_rounds=0)


def test_latency_settings_and_the_config_validate_batches_and_threads() -> None:
    assert latency_settings() == (B1,)
    assert latency_settings(8, 2) == (LatencySetting(8, 2),)
    assert latency_settings((1, 1), ()) == (B1,)
    assert LatencySetting(1, 1).label == "batch 1, 1 thread"
    for batches, threads in (((0,), None), ((1,), (0,)), ((1,), (True,)), (("8",), None)):
        with pytest.raises(ZapoptError, match="positive integers"):
            latency_settings(batches, threads)
        with pytest.raises(ZapoptError, match="positive integers"):
            OptimizeConfig(ExactOnly(), latency_batch=batches, latency_threads=threads)
    assert OptimizeConfig(ExactOnly(), latency_batch=(1, 8), latency_threads=2).latency_threads == 2


def test_time_alternated_alternates_and_pairs_rounds() -> None:
    order: list[str] = []
    ticks = itertools.count()
    clock = lambda: float(next(ticks))  # noqa: E731  every call advances one second
    runners = {"x": lambda: order.append("x"), "y": lambda: order.append("y")}
    timings = time_alternated(runners, repeats=3, warmup=1, clock=clock)
    assert order == ["x", "y"] + ["x", "y"] * 3
    assert timings.samples == {"x": (1.0, 1.0, 1.0), "y": (1.0, 1.0, 1.0)}
    assert timings.ratio("x", "y").median == 1.0
    with pytest.raises(ZapoptError, match="repeats"):
        time_alternated(runners, repeats=0)


def test_best_of_keeps_each_runners_fastest_interleaved_call() -> None:
    order: list[str] = []
    durations = iter([5.0, 1.0, 2.0, 9.0, 7.0, 3.0,   # round 1: x y, x y, x y
                      4.0, 4.0, 6.0, 2.0, 8.0, 8.0])  # round 2 (balanced): y x, y x, y x
    now = [0.0]

    def clock() -> float:
        return now[0]

    def runner(name: str):
        def run() -> None:
            order.append(name)
            now[0] += next(durations)
        return run

    timings = time_alternated({"x": runner("x"), "y": runner("y")}, repeats=2, warmup=0, clock=clock,
                              balanced=True, best_of=3)
    assert order == ["x", "y"] * 3 + ["y", "x"] * 3
    assert timings.samples == {"x": (2.0, 2.0), "y": (1.0, 4.0)}
    assert best_of_for(1) == 1 and best_of_for(2) == best_of_for(None) == WALL_TIME_BEST_OF > 1
    with pytest.raises(ZapoptError, match="best_of"):
        time_alternated({"x": runner("x")}, repeats=1, best_of=0)


def test_balanced_rounds_reverse_the_order_every_other_round() -> None:
    order: list[str] = []
    runners = {"x": lambda: order.append("x"), "y": lambda: order.append("y")}
    time_alternated(runners, repeats=4, warmup=0, balanced=True)
    assert order == ["x", "y", "y", "x", "x", "y", "y", "x"]


def test_spread_median_and_quartiles() -> None:
    spread = Spread.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert spread.median == 3.0 and spread.q1 == 2.0 and spread.q3 == 4.0 and spread.iqr == 2.0
    assert spread.to_dict(scale=1000)["median"] == 3000.0
    with pytest.raises(ZapoptError):
        Spread.of([])


def test_the_median_lower_bound_is_the_sign_test_order_statistic() -> None:
    # P(Binomial(15, 1/2) <= 3) = 0.018 <= 0.05 < P(<= 4) = 0.059: the 4th smallest of 15
    assert lower_bound_rank(15, 0.95) == 4 and lower_bound_rank(15, 0.9) == 5
    assert lower_bound_rank(5, 0.95) == 1 and lower_bound_rank(4, 0.95) is None
    assert median_lower_bound(list(range(15, 0, -1))) == 4
    assert median_lower_bound([1.0, 2.0]) is None
    with pytest.raises(ZapoptError, match="confidence"):
        lower_bound_rank(15, 1.0)


def test_one_thread_is_timed_in_the_threads_cpu_time_more_in_wall_time() -> None:
    import time

    assert clock_for(1) == ("thread CPU time", time.thread_time)
    assert clock_for(2) == clock_for(None) == ("wall time", time.perf_counter)
    assert LatencySetting(1, 1).clock == "thread CPU time" and LatencySetting(8, None).clock == "wall time"
