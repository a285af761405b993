"""Re-choosing thresholds after fine-tuning: plain form, kept predictors, --max-drop search."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.finetune_models import tiny_labeled_arrays, tiny_zap_classifier, zap_reference_model
from zapopt.data import load_embedded_fashion_mnist
from zapopt.errors import ZapoptError
from zapopt.files import save_model_atomically
from zapopt.finetuning import FinetuneConfig, finetune
from zapopt.finetuning.rethreshold import plain_model, rechoose_thresholds
from zapopt.graph import analyze
from zapopt.rewrite.zap_layers import SetThresholds, read_zap_layers
from zapopt.runtime import make_session, prepare


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_plain_model_is_the_zap_model_computing_everything(name: str) -> None:
    zap = zap_reference_model(name)
    plain = plain_model(zap)
    onnx.checker.check_model(plain)
    layers = [layer.name for layer in read_zap_layers(zap)]
    assert not read_zap_layers(plain)
    eligible = {c.conv for c in analyze(plain).convs if c.eligible}
    assert set(layers) <= eligible  # the same layer names, ready for ReplaceWithZap again
    exact = SetThresholds({n: -math.inf for n in layers})(zap).model
    x, _ = load_embedded_fashion_mnist("test")
    x = x[:8, None].astype(np.float32) / 255
    want = make_session(prepare(exact).model).run(None, {"input": x})[0]
    got = make_session(plain).run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * (1 + np.abs(want).max())


def test_rechoose_keeps_predictors_and_meets_the_drop(tmp_path: Path) -> None:
    zap = tiny_zap_classifier()
    x, y = tiny_labeled_arrays(64, seed=5)
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    np.save(tmp_path / "calib.npy", tiny_labeled_arrays(32, seed=6)[0])
    result = rechoose_thresholds(zap, str(tmp_path / "calib.npy"), str(tmp_path / "eval.npz"), 2.0,
                                 calib_images=32, sensitivity_weighting=False, progress=False)
    assert result.drop is not None and result.drop <= 2.0 and result.budget == 2.0
    old = {i.name: numpy_helper.to_array(i) for i in zap.graph.initializer}
    new_model = result.model
    new = {i.name: numpy_helper.to_array(i) for i in new_model.graph.initializer}
    (before,), (after,) = read_zap_layers(zap), read_zap_layers(new_model)
    assert after.name == before.name and after.pattern == before.pattern
    assert after.attrs.predictor_input == before.attrs.predictor_input
    old_node = next(n for n in zap.graph.node if n.op_type == "ZapConv")
    new_node = next(n for n in new_model.graph.node if n.op_type == "ZapConv")
    for a, b in zip(old_node.input[1:7], new_node.input[1:7]):
        assert np.array_equal(old[a], new[b])  # same weights and predictor, only the threshold moved


def test_drop_is_counted_against_the_baseline(tmp_path: Path) -> None:
    save_model_atomically(tiny_zap_classifier(), tmp_path / "tiny.onnx")
    tx, ty = tiny_labeled_arrays(96, seed=1)
    np.savez(tmp_path / "train.npz", x=tx, y=ty)
    finetune(str(tmp_path / "tiny.onnx"), str(tmp_path / "trained.onnx"), str(tmp_path / "train.npz"),
             config=FinetuneConfig(epochs=4, lr=0.05, batch_size=16), progress=False, log=lambda _m: None)
    zap = onnx.load(str(tmp_path / "trained.onnx"))
    x, y = tiny_labeled_arrays(96, seed=5)
    np.savez(tmp_path / "eval.npz", x=x[y != 2], y=y[y != 2])
    np.save(tmp_path / "calib.npy", tiny_labeled_arrays(32, seed=6)[0])
    worse = onnx.ModelProto()
    worse.CopyFrom(zap)
    for init in worse.graph.initializer:  # always class 2, which the eval set never has: top-1 0 %
        if init.name in ("fc.w", "fc.b"):
            value = np.zeros(numpy_helper.to_array(init).shape, np.float32)
            if init.name == "fc.b":
                value[2] = 5.0
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    with pytest.raises(ZapoptError, match="below the model before fine-tuning"):
        rechoose_thresholds(worse, str(tmp_path / "calib.npy"), str(tmp_path / "eval.npz"), 1.0, baseline=zap,
                            calib_images=32, sensitivity_weighting=False, progress=False)
    result = rechoose_thresholds(zap, str(tmp_path / "calib.npy"), str(tmp_path / "eval.npz"), 1.0, baseline=worse,
                                 calib_images=32, sensitivity_weighting=False, progress=False)
    assert result.exact_gain > 1.0 and result.budget == pytest.approx(1.0 + result.exact_gain)


def _tiny_finetune_files(tmp_path: Path) -> tuple[str, str, str]:
    """The tiny ZapConv model, train.npz and val.npz in ``tmp_path``: (model, output, train) arguments."""
    save_model_atomically(tiny_zap_classifier(), tmp_path / "tiny.onnx")
    for name, seed, count in (("train", 1, 96), ("val", 5, 64)):
        x, y = tiny_labeled_arrays(count, seed=seed)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    args = (str(tmp_path / "tiny.onnx"), str(tmp_path / "out.onnx"), str(tmp_path / "train.npz"))
    return args


def test_finetune_max_drop_needs_calib_and_val_then_rechooses(tmp_path: Path) -> None:
    args = _tiny_finetune_files(tmp_path)
    with pytest.raises(ZapoptError, match="needs --val .* and --calib"):
        finetune(*args, max_drop=1.0, val=str(tmp_path / "val.npz"), progress=False)
    report = finetune(*args, max_drop=3.0, val=str(tmp_path / "val.npz"), calib=str(tmp_path / "train.npz"),
                      config=FinetuneConfig(epochs=2, lr=0.05, batch_size=16), progress=False, log=lambda _m: None)
    chosen = report.thresholds
    assert chosen["max_drop"] == 3.0 and chosen["drop"] <= 3.0
    assert chosen["search_budget"] == pytest.approx(3.0 + chosen["exact_gain_points"])
    (layer,) = read_zap_layers(onnx.load(str(tmp_path / "out.onnx")))
    assert chosen["thresholds"] == {layer.name: pytest.approx(layer.threshold)}
    assert "re-chosen" in report.format_table()


def test_operating_drop_trains_at_the_thresholds_chosen_for_it(tmp_path: Path) -> None:
    args = _tiny_finetune_files(tmp_path)
    with pytest.raises(ZapoptError, match="in \\[0, 100\\]"):
        FinetuneConfig(operating_drop=150.0)
    config = FinetuneConfig(epochs=2, lr=0.05, batch_size=16, operating_drop=40.0)
    with pytest.raises(ZapoptError, match="--operating-drop .* needs --val .* and --calib"):
        finetune(*args, val=str(tmp_path / "val.npz"), config=config, progress=False)
    report = finetune(*args, val=str(tmp_path / "val.npz"), calib=str(tmp_path / "train.npz"), config=config,
                      progress=False, log=lambda _m: None)
    operating = report.operating
    assert operating["operating_drop"] == 40.0 and operating["drop"] <= 40.0
    (before,), (after,) = read_zap_layers(tiny_zap_classifier()), read_zap_layers(onnx.load(args[1]))
    assert after.threshold != before.threshold  # a 40 % budget skips more than the model's own threshold
    assert operating["thresholds"] == {after.name: pytest.approx(after.threshold)}  # no --max-drop: kept
    assert report.to_dict()["config"]["operating_drop"] == 40.0 and "trained at the thresholds" in report.format_table()
    with pytest.raises(ZapoptError, match="other settings \\(operating_drop\\)"):
        finetune(*args, val=str(tmp_path / "val.npz"), calib=str(tmp_path / "train.npz"), resume=True,
                 config=FinetuneConfig(epochs=3, lr=0.05, batch_size=16), progress=False)
