"""Latency-aware selection's decisions with injected timings (no timed assertions), and the
alternated-timing helper with a fake clock."""
from __future__ import annotations

import itertools

import pytest

from zapopt.errors import ZapoptError
from zapopt.latency import select_by_latency, unmeasured
from zapopt.timing import Spread, time_alternated

OPS = {"a": "ZeroSkipConv", "b": "ZapConv", "c": "ZeroSkipConv", "d": "ZeroSkipConv"}
#: (native s, stock s): a saves 4 ms, b saves 1 ms, c is slower native, d ties.
LAYER_TIMES = {"a": (0.006, 0.010), "b": (0.004, 0.005), "c": (0.003, 0.002), "d": (0.002, 0.002)}


def test_layers_not_faster_native_keep_their_stock_nodes() -> None:
    calls: list[frozenset[str]] = []

    def model(kept: frozenset[str]) -> tuple[float, float]:
        calls.append(kept)
        return 0.050, 0.060  # faster than the original at once

    report = select_by_latency(OPS, LAYER_TIMES.__getitem__, model)
    assert report.measured and report.native_layers == ["a", "b"]
    assert calls == [frozenset({"a", "b"})]
    decisions = {d.name: d for d in report.layers}
    assert decisions["c"].reason == decisions["d"].reason == "stock nodes as fast or faster"
    assert decisions["a"].native_ms == pytest.approx(6.0) and decisions["a"].stock_ms == pytest.approx(10.0)
    assert decisions["a"].speedup == pytest.approx(10 / 6)
    assert [c.native_layers for c in report.model_checks] == [2]
    assert report.model_checks[0].ratio == pytest.approx(1.2)


def test_a_slower_model_drops_the_least_profitable_layers_until_it_is_not() -> None:
    times = {"a": (0.001, 0.005), "b": (0.004, 0.0045), "c": (0.002, 0.003)}  # savings 4, 0.5, 1 ms
    ops = {name: "ZeroSkipConv" for name in times}
    seen: list[frozenset[str]] = []

    def model(kept: frozenset[str]) -> tuple[float, float]:
        seen.append(kept)
        return (0.011, 0.010) if "b" in kept or "c" in kept else (0.009, 0.010)

    report = select_by_latency(ops, times.__getitem__, model)
    assert seen == [frozenset("abc"), frozenset("ac"), frozenset("a")]
    assert report.native_layers == ["a"]
    dropped = {d.name: d for d in report.layers if not d.native}
    assert set(dropped) == {"b", "c"} and all("whole model was slower" in d.reason for d in dropped.values())
    assert [c.native_layers for c in report.model_checks] == [3, 2, 1]


def test_a_model_that_is_always_slower_ends_with_no_native_layer() -> None:
    report = select_by_latency({"a": "ZeroSkipConv"}, lambda name: (0.001, 0.002), lambda kept: (0.02, 0.01))
    assert report.native_layers == [] and len(report.model_checks) == 1
    text = report.format_table()
    assert "stock" in text and "0.50x" in text


def test_nothing_faster_needs_no_model_timing() -> None:
    def model(kept: frozenset[str]) -> tuple[float, float]:
        raise AssertionError("no native layer left to time")

    report = select_by_latency({"c": "ZeroSkipConv"}, LAYER_TIMES.__getitem__, model)
    assert report.native_layers == [] and report.model_checks == []


def test_unmeasured_keeps_everything_and_says_why() -> None:
    report = unmeasured(OPS, "no library")
    assert not report.measured and report.native_layers == list(OPS)
    assert report.to_dict()["note"] == "no library" and "not measured (no library)" in report.format_table()


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


def test_spread_median_and_quartiles() -> None:
    spread = Spread.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert spread.median == 3.0 and spread.q1 == 2.0 and spread.q3 == 4.0 and spread.iqr == 2.0
    assert spread.to_dict(scale=1000)["median"] == 3000.0
    with pytest.raises(ZapoptError):
        Spread.of([])


def test_a_layer_within_timing_noise_stays_stock() -> None:
    """Native 1.02x faster is within a shared machine's noise: kept stock, with that reason."""
    report = select_by_latency({"a": "ZeroSkipConv"}, lambda name: (0.0100, 0.0102), lambda kept: (0.009, 0.010))
    assert report.native_layers == [] and "within timing noise" in report.layers[0].reason
