"""Every reference model end to end, native (zapopt's op library) against portable (its
expansion on stock onnxruntime): --exact's ZeroSkipConv model and a ZAP model with
ZapConv and ZeroSkipConv layers. Skipped where the library is not built."""
from __future__ import annotations


import numpy as np
import onnx
import pytest

from tests.conftest import REPO_ROOT
from zapopt import native
from zapopt.data import model_input
from zapopt.graph import analyze, with_unique_node_names
from zapopt.ops.patterns import get_pattern
from zapopt.ops.spec import is_zap_node, is_zero_skip_node
from zapopt.rewrite import ReplaceWithZap, ReplaceWithZeroSkip, ZapParams
from zapopt.runtime import make_session, prepare

pytestmark = pytest.mark.skipif(not native.library_available(),
                                reason="libzapopt_ops.so is not built (pip install -e . builds it)")

MODELS = ["vgg16", "resnet18", "alexnet", "mobilenet_v2"]


def load(name: str) -> onnx.ModelProto:
    path = REPO_ROOT / "models" / name / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not built (scripts/install.sh exports MobileNetV2)")
    return with_unique_node_names(onnx.load(path))


def inputs(model: onnx.ModelProto, batch: int = 2) -> tuple[str, np.ndarray]:
    spec = model_input(model)
    shape = [batch, *[d for d in spec.shape[1:]]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return spec.name, (x - 0.45) / 0.225 if shape[1] == 3 else x


def zap_model(original: onnx.ModelProto) -> onnx.ModelProto:
    """Random predictors on every ZAP-eligible layer (threshold 0.3, some outputs skipped)
    and ZeroSkipConv on every other conv whose input can be zero."""
    rng = np.random.default_rng(1)
    layers = {}
    for conv in analyze(original).eligible:
        c = conv.weight_shape[0]
        layers[conv.conv] = ZapParams.from_arrays(
            rng.standard_normal((c, 1, 3, 3)) * 0.3, rng.standard_normal(c) * 0.1,
            rng.standard_normal((c, 1, 3, 3)) * 0.3, rng.standard_normal(c) * 0.1,
            get_pattern("checkerboard"), 0.3, "preactivation")
    return ReplaceWithZeroSkip()(ReplaceWithZap(layers)(original).model).model


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


@pytest.mark.parametrize("name", MODELS)
def test_exact_native_equals_portable_and_original(name: str) -> None:
    original = load(name)
    exact = ReplaceWithZeroSkip()(original).model
    assert any(is_zero_skip_node(n) for n in exact.graph.node)
    feed, x = inputs(original)
    want = make_session(original).run(None, {feed: x})[0]
    native_out = make_session(prepare(exact, native=True).model).run(None, {feed: x})[0]
    portable_out = make_session(prepare(exact, native=False).model).run(None, {feed: x})[0]
    assert relative_error(native_out, want) <= 1e-5
    assert relative_error(portable_out, want) <= 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_zap_native_equals_portable(name: str) -> None:
    original = load(name)
    model = zap_model(original)
    if not any(is_zap_node(n) for n in model.graph.node):
        pytest.skip(f"{name} has no ZAP-eligible layer")
    feed, x = inputs(original)
    runs = {}
    for form in (True, False):
        prepared = prepare(model, expose_masks=True, native=form)
        names = [prepared.output_names[0], *prepared.mask_outputs.values()]
        runs[form] = dict(zip(names, make_session(prepared.model).run(names, {feed: x})))
    output = prepare(model).output_names[0]
    masks = [k for k in runs[True] if k != output]
    assert masks and set(masks) == set(runs[False]) - {output}
    flipped = sum(int(np.count_nonzero(runs[True][m] != runs[False][m])) for m in masks)
    total = sum(runs[True][m].size for m in masks)
    skipped = sum(int(np.count_nonzero(~runs[True][m])) for m in masks)
    assert skipped > 0, "the predictors should skip some outputs"
    # float32 accumulation order may flip a score sitting on the threshold, nothing more
    assert flipped <= 1e-3 * total
    assert relative_error(runs[True][output], runs[False][output]) <= (1e-5 if flipped == 0 else 1e-2)


def test_eval_measures_the_same_savings_natively_and_portably(monkeypatch: pytest.MonkeyPatch) -> None:
    from zapopt import runtime
    from zapopt.evaluate import evaluate

    original = load("vgg16")
    model = zap_model(original)
    data = "embedded:fashion-mnist-test"
    native_report = evaluate(model, data, reference=original, limit=64, progress=False)
    monkeypatch.setenv(runtime.NATIVE_ENV, "0")
    portable_report = evaluate(model, data, reference=original, limit=64, progress=False)
    assert native_report.layers and native_report.savings > 0
    assert native_report.savings == pytest.approx(portable_report.savings, abs=1e-3)
    for a, b in zip(native_report.layers, portable_report.layers):
        assert a.name == b.name and a.computed_share == pytest.approx(b.computed_share, abs=1e-3)
