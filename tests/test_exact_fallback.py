"""ZAP mode writes the exact form when that measured faster (model_building.faster_of)."""
from __future__ import annotations

import onnx
import pytest

import zapopt.model_building as building
from zapopt.latency import EXACT_FALLBACK_NOTE, LatencyReport, LatencySetting, LayerDecision, ModelCheck
from zapopt.native_model import NativeResult
from zapopt.optimize import OptimizeConfig
from zapopt.timing import Timings

B1 = LatencySetting(1, 1)


def check(round_: int, layers: int, ratio: float) -> ModelCheck:
    return ModelCheck.of(round_, layers, B1, Timings({"original": (0.01,) * 25, "model": (0.01 / ratio,) * 25}))


def decision(name: str, op: str, native: bool, speedup: float) -> LayerDecision:
    return LayerDecision(name, op, 1.0, speedup, native, "faster" if native else "stock nodes as fast or faster")


def zap_result(kept: tuple[str, ...] = (), ratio: float = 0.99) -> NativeResult:
    """ZapConv a and b, ZeroSkipConv c; the kept ones in ``kept``, the last check at ``ratio``."""
    layers = [decision("a", "ZapConv", "a" in kept, 1.3 if "a" in kept else 0.6),
              decision("b", "ZapConv", False, 0.8), decision("c", "ZeroSkipConv", "c" in kept, 1.3)]
    checks = [check(1, len(kept), ratio)]
    return NativeResult(onnx.ModelProto(producer_name="zap"), LatencyReport(True, layers, checks, "", (B1,)))


def exact_result(kept: tuple[str, ...], ratio: float) -> NativeResult:
    layers = [decision(n, "ZeroSkipConv", n in kept, 1.2 if n in kept else 0.9) for n in ("a", "b", "c")]
    checks = [check(1, 3, 0.98), check(2, len(kept), ratio)]
    return NativeResult(onnx.ModelProto(producer_name="exact"), LatencyReport(True, layers, checks, "", (B1,)))


def test_the_exact_form_is_written_when_it_measured_faster() -> None:
    result = building.faster_of(zap_result(kept=("a",), ratio=1.02), exact_result(("a", "c"), 1.08))
    assert result.model.producer_name == "exact"
    report = result.latency
    assert report.native_layers == ["a", "c"] and report.note == EXACT_FALLBACK_NOTE
    assert [c.round for c in report.model_checks] == [1, 2, 3]  # the exact rounds follow the ZAP one
    assert building.measured_speedup(report) == pytest.approx(1.08)
    summary = report.summary()
    assert summary.startswith("kept 2 of 3 native layers: end to end 1.080x")  # a, b, c once each
    assert "the exact form measured faster than ZAP's and was written" in summary


def test_the_zap_form_stays_when_it_is_as_fast_or_the_exact_one_kept_nothing() -> None:
    zap = zap_result(kept=("a",), ratio=1.10)
    assert building.faster_of(zap, exact_result(("a", "c"), 1.08)) is zap
    assert building.faster_of(zap, None) is zap
    nothing = zap_result()
    exact_nothing = NativeResult(onnx.ModelProto(), LatencyReport(True, [], [check(1, 2, 0.97)], "", (B1,)))
    assert building.measured_speedup(exact_nothing.latency) == 1.0  # the original graph
    assert building.faster_of(nothing, exact_nothing) is nothing


def test_the_exact_check_takes_every_zero_able_conv_within_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(building, "zero_skip_layers", lambda model, exclude=(): (["a", "b", "c"], {}))

    def choose(original, build, candidates, **kwargs):
        calls.append(list(candidates))
        return exact_result(tuple(candidates), 1.05)

    monkeypatch.setattr(building, "choose_native_layers", choose)
    building.exact_form(onnx.ModelProto(), OptimizeConfig(exclude=("b",)), None)
    assert calls == [["a", "c"]]  # the ZAP layers too, --exclude honoured
    monkeypatch.setattr(building, "zero_skip_layers", lambda model, exclude=(): ([], {}))
    assert building.exact_form(onnx.ModelProto(), OptimizeConfig(), None) is None
