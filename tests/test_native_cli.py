"""optimize --exact, convert, bench and the native/portable runtime, through the CLI and the API."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import REPO_ROOT
from tests.test_cli_basics import run_cli
from tests.test_rewrite_replace import all_layers
from tests.zap_builders import chain_model
from zapopt import native, runtime
from zapopt.errors import ZapoptError
from zapopt.model_form import convert_model, model_form
from zapopt.ops.spec import is_zero_skip_node
from zapopt.retune import retune
from zapopt.rewrite import ReplaceWithZap, ReplaceWithZeroSkip, read_zap_layers
from zapopt.runtime import make_session, prepare

RESNET = REPO_ROOT / "models" / "resnet18" / "resnet18.onnx"
CALIB = "embedded:fashion-mnist-train"
TEST = "embedded:fashion-mnist-test"


def fashion_images(n: int = 32) -> np.ndarray:
    data = np.load(REPO_ROOT / "zapopt/data/assets/fashion_mnist_test_2000.npz")["x"][:n, None]
    return data.astype(np.float32) / 255


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


@pytest.fixture(scope="module")
def exact_model(tmp_path_factory) -> Path:
    """ResNet --exact with every candidate native (no latency check), so it has native nodes."""
    out = tmp_path_factory.mktemp("exact") / "r18.exact.onnx"
    result = run_cli("optimize", str(RESNET), "--calib", CALIB, "--exact", "--no-latency-check", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "warning: speed unmeasured" in result.stderr and "--no-latency-check" in result.stderr
    return out


def test_exact_model_computes_the_original_outputs(exact_model: Path) -> None:
    model = onnx.load(exact_model)
    zero_skip = [n for n in model.graph.node if is_zero_skip_node(n)]
    report = json.loads(Path(f"{exact_model}.report.json").read_text())
    assert report["mode"] == "exact" and not report["latency"]["measured"]
    assert len(zero_skip) == len(report["zero_skip_candidates"]) == 19
    assert any("exact zeros" in r["reason"] for r in report["ineligible"])
    x = fashion_images()
    want = make_session(onnx.load(RESNET)).run(None, {"input": x})[0]
    got = make_session(prepare(model).model).run(None, {"input": x})[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5


def test_latency_check_writes_only_the_layers_it_found_faster(tmp_path: Path) -> None:
    """A real latency check at two batch sizes: whatever the timings, the report is whole and
    agrees with the written model, and a model without native nodes computes the original."""
    from zapopt.latency_timer import MODEL_REPEATS

    out = tmp_path / "m.onnx"
    result = run_cli("optimize", str(RESNET), "--calib", CALIB, "--exact", "--latency-batch", "2,1",
                     "--latency-threads", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    latency = json.loads(Path(f"{out}.report.json").read_text())["latency"]
    written = sorted(n.name for n in onnx.load(out).graph.node if is_zero_skip_node(n))
    assert latency["measured"] == native.library_available()
    assert sorted(d["name"] for d in latency["layers"] if d["native"]) == written
    if not latency["measured"]:
        return
    assert latency["settings"] == [{"batch": b, "threads": 1, "clock": "thread CPU time"} for b in (1, 2)]
    assert all(d["native_ms"] > 0 and d["stock_ms"] > 0 for d in latency["layers"])
    assert all(d["native_ms"] < d["stock_ms"] for d in latency["layers"] if d["native"])
    assert "latency-aware selection" in result.stdout and latency["summary"] in result.stdout
    checks = latency["model_checks"]
    for check in checks:
        ratios = check["speedup"]
        assert check["passed"] == (check["lower_bound"] is not None and check["lower_bound"] > 1.0)
        assert ratios["count"] == MODEL_REPEATS and ratios["q1"] <= ratios["median"] <= ratios["q3"]
        assert check["lower_bound"] <= ratios["median"]
    if written:
        last = [c for c in checks if c["round"] == checks[-1]["round"]]
        assert [(c["batch"], c["passed"]) for c in last] == [(1, True), (2, True)]
        assert latency["summary"].startswith(f"kept {len(written)} of 19 native layers: end to end")
    else:
        assert latency["summary"].startswith("no native layer pays on this machine: the output equals the original")
        assert "warning: no native layer pays" in result.stderr
        x = fashion_images(4)
        want = make_session(onnx.load(RESNET)).run(None, {"input": x})[0]
        np.testing.assert_array_equal(make_session(onnx.load(out)).run(None, {"input": x})[0], want)


@pytest.mark.skipif(not native.library_available(), reason="zapopt's native op library is not built")
def test_the_real_latency_measurements_are_well_formed() -> None:
    """The onnxruntime timer's three measurements on two ResNet layers (shapes, not speeds)."""
    from zapopt.latency import LatencySetting
    from zapopt.latency_timer import OnnxruntimeTimer
    from zapopt.native_model import layer_ports, native_builder, zero_skip_layers

    original = onnx.load(RESNET)
    eligible, _ = zero_skip_layers(original)
    build = native_builder(original, eligible)
    everything = build(frozenset(eligible))
    timer = OnnxruntimeTimer(original, everything, layer_ports(everything), build,
                             lambda n: fashion_images(n), layer_threads=1, model_repeats=5, profile_runs=2)
    kept = frozenset(eligible[-2:])
    alone = timer.time_layer(eligible[-1])
    assert sorted(alone.samples) == ["native", "stock"] and all(len(v) == 7 for v in alone.samples.values())
    assert alone.median("native") > 0 and alone.median("stock") > 0
    costs = timer.layer_costs(kept)
    assert set(costs) == kept
    assert all(c.native_ms > 0 and c.stock_ms and c.stock_ms > 0 and c.reorder_ms >= 0 for c in costs.values())
    assert sum(c.reorder_ms for c in costs.values()) > 0  # the NCHWc chain ends before the native pair
    timings = timer.time_model(kept, LatencySetting(3, 1))
    assert sorted(timings.samples) == ["model", "original"]
    assert all(len(v) == 5 and min(v) > 0 for v in timings.samples.values())
    assert timer.inputs(3).shape == (3, 1, 28, 28)


def test_latency_option_mistakes_are_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "m.onnx")
    for flag, value in (("--latency-batch", "0"), ("--latency-threads", "two")):
        message = one_line_error(run_cli("optimize", str(RESNET), "--calib", CALIB, "--exact", flag, value,
                                         "-o", out))
        assert flag in message and "positive integers" in message


def test_exact_user_errors_are_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "m.onnx")
    message = one_line_error(run_cli("optimize", str(RESNET), "--calib", CALIB, "--exact", "--threshold", "0.3",
                                     "-o", out))
    assert "--exact trains no predictors" in message
    message = one_line_error(run_cli("optimize", str(RESNET), "--calib", CALIB, "--exact", "--format", "zap",
                                     "-o", out))
    assert "--format native" in message
    message = one_line_error(run_cli("optimize", str(RESNET), "--calib", "no/such/dir", "--exact", "-o", out))
    assert "no/such/dir" in message
    assert not Path(out).exists()


def test_convert_round_trip_through_the_cli(exact_model: Path, tmp_path: Path) -> None:
    portable, native = tmp_path / "p.onnx", tmp_path / "n.onnx"
    assert run_cli("convert", str(exact_model), "-o", str(portable), "--to", "portable").returncode == 0
    assert model_form(onnx.load(portable)) == "portable"
    assert run_cli("convert", str(portable), "-o", str(native), "--to", "native").returncode == 0
    assert native.read_bytes() == onnx.load(exact_model).SerializeToString()
    assert "no zapopt layers" in one_line_error(run_cli("convert", str(RESNET), "-o", str(tmp_path / "x.onnx"),
                                                        "--to", "native"))
    assert "input file" in one_line_error(run_cli("convert", str(portable), "-o", str(portable), "--to", "native"))
    assert "already in portable form" in one_line_error(
        run_cli("convert", str(portable), "-o", str(tmp_path / "y.onnx"), "--to", "portable"))


def test_bench_reports_ratios_with_spread_and_the_machine(exact_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_cli("bench", str(exact_model), "--reference", str(RESNET), "--data", TEST, "--batch", "1,2",
                     "--threads", "1,2", "--runs", "3", "--cpu-time", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [(r["batch"], r["threads"], r["clock"]) for r in report["end_to_end"]] == [
        (1, 1, "thread CPU time"), (1, 2, "wall time"), (2, 1, "thread CPU time"), (2, 2, "wall time")]
    assert len(report["machine"]["load_average"]) == 3
    for row in report["end_to_end"]:
        assert row["speedup"]["count"] == 3 and row["speedup"]["q1"] <= row["speedup"]["median"] <= row["speedup"]["q3"]
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    if report["form"] == "native":  # per-layer profile needs the library
        assert len(report["layers"]) == 19 and all(0 <= b["input_zero_share"] <= 1 for b in report["layers"])
        assert report["profile_threads"] == 1  # the fewest --threads: the least disturbed node times
    else:
        assert "portable form" in " ".join(report["notes"])
    assert "speed-up" in result.stdout
    assert "positive integers" in one_line_error(run_cli("bench", str(exact_model), "--reference", str(RESNET),
                                                         "--data", TEST, "--batch", "0"))
    assert "nope.onnx" in one_line_error(run_cli("bench", str(exact_model), "--reference", "nope.onnx",
                                                 "--data", TEST))


def test_native_models_fall_back_to_the_portable_form_with_a_note(monkeypatch, capsys) -> None:
    native = ReplaceWithZeroSkip()(chain_model()).model
    monkeypatch.setenv(runtime.NATIVE_ENV, "0")
    runtime._note_portable_fallback.cache_clear()
    prepared = prepare(native)
    assert not prepared.native and model_form(prepared.model) == "portable"
    assert "ZAPOPT_NATIVE=0 is set; running the portable form" in capsys.readouterr().err
    with pytest.raises(ZapoptError, match=r"register_custom_ops_library\(zapopt.get_library_path\(\)\)"):
        make_session(native)
    with pytest.raises(ZapoptError, match="register_custom_ops_library"):
        prepare(native, native=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = make_session(chain_model()).run(None, {"input": x})
    got = make_session(prepared.model).run(None, {"input": x})
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_retune_keeps_a_portable_model_portable(tmp_path: Path) -> None:
    native = ReplaceWithZap(all_layers(0.2))(chain_model()).model
    portable = tmp_path / "p.onnx"
    onnx.save(convert_model(native, "portable"), portable)
    out = tmp_path / "r.onnx"
    retune(portable, out, threshold=0.5)
    tuned = onnx.load(out)
    assert model_form(tuned) == "portable"
    assert {layer.threshold for layer in read_zap_layers(convert_model(tuned, "native"))} == {0.5}
    retune(portable, tmp_path / "e.onnx", threshold=-math.inf)
