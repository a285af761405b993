"""ZAP mode falls back to the exact form when no ZapConv pays (model_building.exact_fallback)."""
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


def zap_result(kept: tuple[str, ...] = ()) -> NativeResult:
    layers = [decision("a", "ZapConv", False, 0.6), decision("b", "ZapConv", False, 0.8),
              decision("c", "ZeroSkipConv", "c" in kept, 1.3)]
    checks = [check(1, 1, 1.05 if kept else 0.99)]
    return NativeResult(onnx.ModelProto(producer_name="zap"), LatencyReport(True, layers, checks, "", (B1,)))


def exact_result(kept: tuple[str, ...]) -> NativeResult:
    layers = [decision(n, "ZeroSkipConv", n in kept, 1.2 if n in kept else 0.9) for n in ("a", "b", "c")]
    checks = [check(1, 3, 0.98), check(2, len(kept), 1.08)]
    return NativeResult(onnx.ModelProto(producer_name="exact"), LatencyReport(True, layers, checks, "", (B1,)))


@pytest.fixture
def exact_run(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """exact_fallback's candidates and its exact check, faked: every Conv is zero-able."""
    calls: list[list[str]] = []
    monkeypatch.setattr(building, "zero_skip_layers", lambda model, exclude=(): (["a", "b", "c"], {}))

    def choose(original, build, candidates, **kwargs):
        calls.append(list(candidates))
        return exact_result(("a", "c"))

    monkeypatch.setattr(building, "choose_native_layers", choose)
    return calls


def test_the_exact_form_is_written_when_it_keeps_more_layers(exact_run: list[list[str]]) -> None:
    result = building.exact_fallback(onnx.ModelProto(), zap_result(), OptimizeConfig(), None)
    assert exact_run == [["a", "b", "c"]]  # the ZAP layers are exact candidates too
    assert result.model.producer_name == "exact"
    report = result.latency
    assert report.native_layers == ["a", "c"] and report.note == EXACT_FALLBACK_NOTE
    assert [c.round for c in report.model_checks] == [1, 2, 3]  # the exact rounds follow the ZAP ones
    assert report.deciding_checks[0].speedup.median == pytest.approx(1.08)
    summary = report.summary()
    assert summary.startswith("kept 2 of 3 native layers: end to end 1.080x")
    assert "the exact form was written" in summary


def test_the_zap_result_stays_when_the_exact_form_keeps_no_more(exact_run: list[list[str]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(building, "choose_native_layers", lambda *a, **k: exact_result(("c",)))
    zap = zap_result(kept=("c",))
    assert building.exact_fallback(onnx.ModelProto(), zap, OptimizeConfig(), None) is zap


def test_only_a_zap_result_without_a_native_zapconv_falls_back() -> None:
    assert building._no_zapconv_paid(zap_result(), ["a", "b"])
    kept_zap = NativeResult(onnx.ModelProto(), LatencyReport(True, [decision("a", "ZapConv", True, 1.2)], [], "", (B1,)))
    assert not building._no_zapconv_paid(kept_zap, ["a"])
    unmeasured = NativeResult(onnx.ModelProto(), LatencyReport(False, [], [], "no library"))
    assert not building._no_zapconv_paid(unmeasured, ["a"])
    assert not building._no_zapconv_paid(zap_result(), [])
