"""End to end: optimize -> eval -> sweep -> retune on a small real-data CNN, plus user errors."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import REPO_ROOT
from zapopt.errors import ZapoptError
from zapopt.ops.spec import ZapConvAttrs, is_zap_node
from zapopt.evaluate import evaluate, run_model
from zapopt.optimize import AccuracyBudget, ErrorBudget, OptimizeConfig, UniformThreshold, optimize
from zapopt.retune import retune
from zapopt.rewrite.zap_layers import read_zap_layers
from zapopt.model_form import convert, model_form
from zapopt.runtime import make_session, prepare
from zapopt.sensitivity import PROBE_ERRORS
from zapopt.sweep import sweep

CALIB = "embedded:fashion-mnist-train"
TEST = "embedded:fashion-mnist-test"


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    """A small CNN (Conv-ReLU, Conv-BN-ReLU, residual Conv-BN-Add-ReLU), briefly trained."""
    import torch
    from torch import nn

    from zapopt.data import load_embedded_fashion_mnist

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 16, 3, padding=1)
            self.b2 = nn.BatchNorm2d(16)
            self.c3 = nn.Conv2d(16, 16, 3, padding=1)
            self.b3 = nn.BatchNorm2d(16)
            self.fc = nn.Linear(16 * 7 * 7, 10)

        def forward(self, x):
            x = torch.relu(self.c1(x))
            x = nn.functional.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
            x = torch.relu(self.b3(self.c3(x)) + x)
            return self.fc(nn.functional.max_pool2d(x, 2).flatten(1))

    torch.manual_seed(0)
    net = Net()
    x, y = load_embedded_fashion_mnist("train")
    xt = torch.from_numpy(x[:, None].astype(np.float32) / 255)
    yt = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(2):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    net.eval()
    path = tmp_path_factory.mktemp("model") / "small.onnx"
    torch.onnx.export(net, xt[:1], str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def optimized(small_cnn: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "small.zap.onnx"
    before = hashlib.sha256(small_cnn.read_bytes()).hexdigest()
    result = optimize(small_cnn, out, CALIB, config=OptimizeConfig(latency_check=False, calib_images=128, epochs=2), progress=False)
    assert hashlib.sha256(small_cnn.read_bytes()).hexdigest() == before, "the input model was modified"
    return out, result


def test_optimize_writes_zap_model_and_report(optimized) -> None:
    out, result = optimized
    model = onnx.load(out)
    onnx.checker.check_model(model)
    layers = read_zap_layers(model)
    assert [l.name for l in layers] == [l.name for l in result.report.zap_layers]  # noqa: E741
    assert any(l.skip for l in layers), "the residual layer should carry its skip input"  # noqa: E741
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["layers"] and "curves" in report
    assert 0 < report["savings"] < report["oracle_savings"] + 0.2
    # A perfect predictor at its real cost: the free oracle minus 18 MACs per activation, where it pays.
    at_cost = sum(max(0.0, l["macs"] - l["oracle_macs_after"] - l["predictor_macs"])  # noqa: E741
                  for l in report["layers"]) / report["total_macs"]  # noqa: E741
    assert report["oracle_savings_with_predictor"] == pytest.approx(at_cost)
    assert 0 < at_cost < report["oracle_savings"]
    assert all(l["predictor_macs"] > 0 for l in report["layers"])  # noqa: E741
    # 16x28x28 trains for --epochs, the residual layer's 16x14x14 map for 4x as many
    assert sorted(l["train_epochs"] for l in report["layers"]) == [2, 8]  # noqa: E741
    # the first conv is skipped with a reason
    assert any("first conv" in s["reason"] or "predictor would cost" in s["reason"] for s in report["skipped"])


def test_compute_everything_equals_original(small_cnn: Path, optimized, tmp_path: Path) -> None:
    out, _ = optimized
    exact = tmp_path / "exact.onnx"
    retune(out, exact, threshold=-math.inf)
    data = np.load(REPO_ROOT / "zapopt/data/assets/fashion_mnist_test_2000.npz")["x"][:64, None].astype(np.float32) / 255
    original = make_session(onnx.load(small_cnn)).run(None, {"input": data})[0]
    zap = make_session(prepare(onnx.load(exact)).model).run(None, {"input": data})[0]
    rel = np.linalg.norm(zap - original) / np.linalg.norm(original)
    assert rel <= 1e-5


def test_portable_format_matches_zap_format(small_cnn: Path, optimized, tmp_path: Path) -> None:
    out, _ = optimized
    portable = tmp_path / "portable.onnx"
    optimize(small_cnn, portable, CALIB, config=OptimizeConfig(latency_check=False, calib_images=128, epochs=2, output_format="onnx"),
             progress=False)
    model = onnx.load(portable)
    assert not read_zap_layers(model)
    assert all(op.domain in ("", "ai.onnx") for op in model.opset_import)
    data = np.load(REPO_ROOT / "zapopt/data/assets/fashion_mnist_test_2000.npz")["x"][:32, None].astype(np.float32) / 255
    a = make_session(model).run(None, {"input": data})[0]
    b = make_session(prepare(onnx.load(out)).model).run(None, {"input": data})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _predictor_inputs(path: Path) -> set[str]:
    return {ZapConvAttrs.from_node(n).predictor_input for n in onnx.load(path).graph.node if is_zap_node(n)}


def test_papers_activation_input_is_selectable_and_realises_its_curves(small_cnn: Path, optimized,
                                                                       tmp_path: Path) -> None:
    out, result = optimized
    assert _predictor_inputs(out) == {"preactivation"} and result.report.predictor_input == "preactivation"
    paper = tmp_path / "paper.onnx"
    config = OptimizeConfig(latency_check=False, calib_images=128, epochs=2, predictor_input="activation")
    paper_result = optimize(small_cnn, paper, CALIB, config=config, progress=False)
    assert _predictor_inputs(paper) == {"activation"}
    assert json.loads(Path(f"{paper}.report.json").read_text())["predictor_input"] == "activation"
    report = evaluate(paper, TEST, reference=small_cnn, limit=400, progress=False)
    assert abs(report.savings - paper_result.report.savings) < 0.05


def test_eval_realises_the_expected_savings(small_cnn: Path, optimized) -> None:
    out, result = optimized
    report = evaluate(out, TEST, reference=small_cnn, limit=400, progress=False)
    assert report.top1 is not None and report.reference_top1 is not None
    assert 0.0 < report.savings < 1.0
    # calibration curves predict the savings on other images of the same distribution
    assert abs(report.savings - result.report.savings) < 0.05
    assert report.agreement > 0.9


def test_sweep_is_monotone_in_savings_and_writes_plot(optimized, tmp_path: Path) -> None:
    out, _ = optimized
    report = sweep(out, TEST, thresholds=[0.0, 0.2, 0.5], limit=200, output_json=tmp_path / "s.json",
                   output_png=tmp_path / "s.png", progress=False)
    savings = [p.savings for p in report.points]
    assert savings == sorted(savings)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "s.json").read_text())["points"][0]["threshold"] == 0.0


def test_retune_with_error_budget_uses_report_curves(optimized, tmp_path: Path) -> None:
    out, result = optimized
    chosen = retune(out, tmp_path / "r.onnx", max_error=0.05, report=f"{out}.report.json")
    assert set(chosen) == {l.name for l in result.report.zap_layers}  # noqa: E741
    written = {l.name: l.threshold for l in read_zap_layers(onnx.load(tmp_path / "r.onnx"))}  # noqa: E741
    assert written == pytest.approx(chosen, rel=1e-6)  # attributes are float32


def test_realised_usage_counts_masks(optimized) -> None:
    out, _ = optimized
    from zapopt.data import model_input, open_dataset

    model = onnx.load(out)
    ds = open_dataset(TEST, model_input(model), limit=64)
    usage = run_model(model, ds, progress=False).usage
    for u in usage.values():
        assert 0.5 <= u.computed_share <= 1.0  # checkerboard computes at least half
        assert u.nonzero_share <= u.computed_share + 1e-9  # skipped activations are zero


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=REPO_ROOT)


@pytest.mark.parametrize("make_args, message", [
    (lambda m, t: ["optimize", m, "-o", m, "--calib", CALIB], "is an input file"),
    (lambda m, t: ["optimize", m, "-o", str(t / "o.onnx"), "--calib", CALIB, "--pattern", "zig"], "unknown pattern"),
    (lambda m, t: ["optimize", m, "-o", str(t / "o.onnx"), "--calib", CALIB, "--threshold", "abc"], "not a number"),
    (lambda m, t: ["optimize", m, "-o", str(t / "no/dir/o.onnx"), "--calib", CALIB], "does not exist"),
    (lambda m, t: ["optimize", str(t / "missing.onnx"), "-o", str(t / "o.onnx"), "--calib", CALIB], "not found"),
    (lambda m, t: ["optimize", m, "-o", str(t / "o.onnx"), "--calib", str(t / "nan.npy")], "NaN"),
    (lambda m, t: ["optimize", m, "-o", str(t / "o.onnx"), "--calib", str(t / "wrong.npy")], "the model wants 1"),
    (lambda m, t: ["optimize", m, "-o", str(t / "o.onnx"), "--calib", CALIB, "--layers", "nope"], "matches no Conv"),
    (lambda m, t: ["optimize", m, "-o", str(t / "o.onnx"), "--calib", CALIB, "--max-drop", "1"], "--eval"),
    (lambda m, t: ["optimize", str(t / "corrupt.onnx"), "-o", str(t / "o.onnx"), "--calib", CALIB], "onnx"),
])
def test_optimize_user_errors_are_one_line(small_cnn: Path, tmp_path: Path, make_args, message) -> None:
    np.save(tmp_path / "nan.npy", np.full((16, 1, 28, 28), np.nan, np.float32))
    np.save(tmp_path / "wrong.npy", np.zeros((16, 3, 32, 32), np.float32))
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 10)
    result = cli(*make_args(str(small_cnn), tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message.lower() in result.stderr.lower(), result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_no_eligible_layer_is_a_clean_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 28, 28])], [w])
    path = tmp_path / "noact.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ZapoptError, match="no layer to optimize"):
        optimize(path, tmp_path / "o.onnx", CALIB, progress=False)


def test_outputs_never_overwrite_inputs_or_each_other(small_cnn: Path, optimized, tmp_path: Path) -> None:
    out, _ = optimized
    calib = tmp_path / "c.npy"
    np.save(calib, np.zeros((16, 1, 28, 28), np.float32))
    before = calib.read_bytes()
    with pytest.raises(ZapoptError, match="input file"):
        optimize(small_cnn, calib, str(calib), progress=False)
    with pytest.raises(ZapoptError, match="both be written"):
        optimize(small_cnn, tmp_path / "m.onnx", CALIB, report_path=tmp_path / "m.onnx", progress=False)
    with pytest.raises(ZapoptError, match="both be written"):
        sweep(out, TEST, output_json=tmp_path / "s.png", output_png=tmp_path / "s.png", progress=False)
    with pytest.raises(ZapoptError, match="input file"):
        retune(out, f"{out}.report.json", max_error=0.1, report=f"{out}.report.json")
    assert calib.read_bytes() == before


def test_layers_left_exact_cost_no_predictor(small_cnn: Path, optimized, tmp_path: Path) -> None:
    out, _ = optimized
    exact = tmp_path / "exact.onnx"
    retune(out, exact, threshold=-math.inf)
    report = evaluate(exact, TEST, limit=64, progress=False)
    assert report.savings == pytest.approx(0.0, abs=1e-12)


def test_eval_counts_the_portable_form_as_its_native_layers(small_cnn: Path, tmp_path: Path) -> None:
    portable = tmp_path / "p.onnx"
    optimize(small_cnn, portable, CALIB, config=OptimizeConfig(latency_check=False, calib_images=32, epochs=1, output_format="onnx"),
             progress=False)
    assert model_form(onnx.load(portable)) == "portable"
    native = tmp_path / "n.onnx"
    convert(portable, native, to="native")
    from_portable = evaluate(portable, TEST, limit=16, progress=False)
    from_native = evaluate(native, TEST, limit=16, progress=False)
    assert from_portable.layers and from_portable.to_dict() | {"model": ""} == from_native.to_dict() | {"model": ""}


def test_eval_without_max_drop_and_float32_twin_threshold(small_cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(ZapoptError, match="--eval is only used"):
        optimize(small_cnn, tmp_path / "a.onnx", CALIB, eval_data=TEST, progress=False)
    # 0.100000001 rounds to the same float32 as the grid's 0.1: must not break the curves
    config = OptimizeConfig(UniformThreshold(0.100000001), latency_check=False, calib_images=32, epochs=1)
    assert optimize(small_cnn, tmp_path / "b.onnx", CALIB, config=config, progress=False).report.zap_layers


def test_labels_out_of_range_are_an_error(optimized, tmp_path: Path) -> None:
    out, _ = optimized
    np.savez(tmp_path / "bad.npz", x=np.zeros((8, 1, 28, 28), np.float32), y=np.full(8, 42))
    with pytest.raises(ZapoptError, match="class indices"):
        evaluate(out, str(tmp_path / "bad.npz"), progress=False)


def test_optimize_plots_layer_curves(small_cnn: Path, tmp_path: Path) -> None:
    result = cli("optimize", str(small_cnn), "-o", str(tmp_path / "m.onnx"), "--calib", CALIB, "--calib-images", "32",
                 "--epochs", "1", "--max-error", "0.2", "--plot", str(tmp_path / "curves.png"), "-q",
                 "--no-latency-check")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "curves.png" in result.stdout


@pytest.mark.parametrize("weighting", [True, False])
def test_max_drop_meets_its_limit_on_the_eval_data(small_cnn: Path, tmp_path: Path, weighting: bool) -> None:
    out = tmp_path / "drop.onnx"
    config = OptimizeConfig(AccuracyBudget(1.0, sensitivity=weighting), latency_check=False, calib_images=64,
                            epochs=1, eval_images=300)
    result = optimize(small_cnn, out, CALIB, config=config, eval_data=TEST, progress=False)
    assert result.report.measured_drop is not None and result.report.measured_drop <= 1.0
    assert result.report.search and all("drop" in e for e in result.report.search)
    sensitivities = result.report.sensitivities
    if weighting:
        assert {s["name"] for s in sensitivities} == {layer.name for layer in result.report.layers}
        for s in sensitivities:  # probes in increasing error, at thresholds on the layer's curve
            assert 1 <= len(s["taus"]) <= len(PROBE_ERRORS) and s["errors"] == sorted(s["errors"])
            assert all(e > 0 for e in s["errors"]) and all(d >= 0 for d in s["divergences"])
            assert set(s["taus"]) <= set(result.curves[s["name"]].taus.tolist())
        assert "KL divergence" in result.report.format_table()
        assert {e["budget_unit"] for e in result.report.search} == {"estimated output KL divergence (nats)"}
    else:
        assert sensitivities == []
        assert {e["budget_unit"] for e in result.report.search} == {"activation mass lost"}
    # The drop the search measured is what `zapopt eval` measures on the same images.
    measured = evaluate(out, TEST, reference=small_cnn, limit=300, progress=False)
    assert measured.top1_drop == pytest.approx(result.report.measured_drop, abs=1e-9)  # both in points
    # Its standard error is reported with it: the chosen point's, from the search trace.
    chosen = [e for e in result.report.search if e["measured_drop"] == result.report.measured_drop]
    assert chosen and result.report.drop_standard_error in {e["drop_standard_error"] for e in chosen}
    assert result.report.to_dict()["measured_drop_standard_error_pct"] == result.report.drop_standard_error
    assert f"standard error {result.report.drop_standard_error:.2f}" in result.report.format_table()


def test_drop_margin_makes_the_search_conservative(small_cnn: Path, tmp_path: Path) -> None:
    base = dict(calib_images=64, epochs=1, eval_images=300, latency_check=False)
    plain = optimize(small_cnn, tmp_path / "plain.onnx", CALIB, config=OptimizeConfig(AccuracyBudget(1.0), **base),
                     eval_data=TEST, progress=False).report
    careful = optimize(small_cnn, tmp_path / "careful.onnx", CALIB,
                       config=OptimizeConfig(AccuracyBudget(1.0, margin=2.0), **base), eval_data=TEST,
                       progress=False).report
    assert careful.savings <= plain.savings + 1e-12
    # Every point the careful search accepted had drop + 2 standard errors within the limit.
    for entry in careful.search:
        assert entry["drop"] == pytest.approx(entry["measured_drop"] + 2.0 * entry["drop_standard_error"])
        assert entry["drop_standard_error"] >= 0
        assert entry["feasible"] == (entry["drop"] <= 1.0)
    assert careful.measured_drop is not None and careful.measured_drop <= 1.0


def test_pattern_chosen_per_layer_is_written_and_reported(small_cnn: Path, tmp_path: Path) -> None:
    from zapopt.optimize import choose_thresholds, finish, prepare_layers
    from zapopt.thresholds import error_budget

    config = OptimizeConfig(ErrorBudget(0.05), latency_check=False, pattern="checkerboard,diag3x3-33", calib_images=96,
                            epochs=1)
    prepared = prepare_layers(small_cnn, CALIB, config=config, progress=False)
    assert set(prepared.by_pattern) == {"checkerboard", "diag3x3-33"}
    choice = choose_thresholds(prepared, config)
    result = finish(prepared, choice, config, model_name=str(small_cnn))
    zap = {layer.name: layer for layer in result.report.zap_layers}
    assert zap and set(choice.patterns) == set(zap)
    nodes = {n.name: ZapConvAttrs.from_node(n) for n in result.model.graph.node if is_zap_node(n)}
    assert {name: attrs.pattern.name for name, attrs in nodes.items()} == {n: l.pattern for n, l in zap.items()}
    # real thresholds, on the chosen pattern's curve, within the budget
    error = 0.0
    for name, layer in zap.items():
        curve = prepared.by_pattern[layer.pattern][name].curve
        assert layer.threshold in curve.taus
        error += layer.error
    assert error <= 0.05 + 1e-9
    # at least as much as either pattern alone at the same budget
    for pattern, layers in prepared.by_pattern.items():
        alone = error_budget({n: t.curve for n, t in layers.items()}, 0.05)
        saved = result.report.total_macs - result.report.macs_after
        assert saved >= alone.macs_before - alone.macs_after - 1e-6
    onnx.checker.check_model(result.model)


def test_sensitivity_probes_with_several_patterns_report_real_thresholds(small_cnn: Path) -> None:
    """With several candidate patterns each probe is a (pattern, threshold) option; the
    report names each one's pattern and that pattern's own threshold."""
    from zapopt.optimize import choose_thresholds, prepare_layers

    config = OptimizeConfig(AccuracyBudget(1.0), latency_check=False, pattern="checkerboard,diag3x3-33",
                            calib_images=64, epochs=1, eval_images=200)
    prepared = prepare_layers(small_cnn, CALIB, config=config, eval_data=TEST, progress=False)
    choice = choose_thresholds(prepared, config, eval_data=TEST, progress=False)
    assert choice.sensitivities
    for row in choice.sensitivities:
        assert row["taus"] and len(row["patterns"]) == len(row["taus"]) == len(row["errors"])
        for pattern, tau, error in zip(row["patterns"], row["taus"], row["errors"]):
            curve = prepared.by_pattern[pattern][row["name"]].curve
            index = np.flatnonzero(curve.taus == tau)
            assert index.size == 1 and curve.error[index[0]] == pytest.approx(error)


def test_max_drop_nothing_fits_is_a_clear_error(small_cnn: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zapopt.accuracy_search as search_module
    from zapopt.optimize import choose_thresholds, finish, prepare_layers

    config = OptimizeConfig(AccuracyBudget(0.5), latency_check=False, calib_images=32, epochs=1, eval_images=100)
    prepared = prepare_layers(small_cnn, CALIB, config=config, eval_data=TEST, progress=False)
    monkeypatch.setattr(search_module, "accuracy_drop", lambda *_: 5.0)  # every point misses the limit
    choice = choose_thresholds(prepared, config, eval_data=TEST, progress=False)
    assert choice.measured_drop is None and choice.drop_standard_error is None
    assert all(tau == -math.inf for tau in choice.thresholds.values())
    assert choice.search and all(e["measured_drop"] == 5.0 for e in choice.search)
    with pytest.raises(ZapoptError, match="no setting kept the accuracy drop within 0.5%"):
        finish(prepared, choice, config, model_name="m.onnx")


def test_a_second_max_drop_search_reuses_the_probes(small_cnn: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another --max-drop target on the same prepared layers and data needs no new probes:
    the result equals a search that probes again; probes of other layers or images are refused."""
    import zapopt.accuracy_search as search_module
    from zapopt.optimize import choose_thresholds, prepare_layers

    config = OptimizeConfig(AccuracyBudget(0.5), latency_check=False, calib_images=32, epochs=1, eval_images=200)
    prepared = prepare_layers(small_cnn, CALIB, config=config, eval_data=TEST, progress=False)
    first = choose_thresholds(prepared, config, eval_data=TEST, progress=False)
    assert first.probes is not None and set(first.probes.layers) == set(prepared.curves)
    looser = replace(config, selection=AccuracyBudget(2.0))
    probed_again = choose_thresholds(prepared, looser, eval_data=TEST, progress=False)

    def no_probing(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the probes were run again")

    monkeypatch.setattr(search_module, "layer_sensitivities", no_probing)
    reused = choose_thresholds(prepared, looser, eval_data=TEST, progress=False, probes=first.probes)
    assert reused.thresholds == probed_again.thresholds
    assert reused.sensitivities == probed_again.sensitivities
    other = prepare_layers(small_cnn, CALIB, config=replace(config, seed=1), eval_data=TEST, progress=False)
    with pytest.raises(ZapoptError, match="not a point of its curve"):
        choose_thresholds(other, looser, eval_data=TEST, progress=False, probes=first.probes)
    with pytest.raises(ZapoptError, match="other --eval images"):
        choose_thresholds(prepared, replace(looser, eval_images=100), eval_data=TEST, progress=False,
                          probes=first.probes)
