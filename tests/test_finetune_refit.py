"""`finetune --refit-predictors`: predictors trained again on the fine-tuned weights, then
thresholds re-chosen; refused without --max-drop before any training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cli import main
from tests.finetune_models import tiny_labeled_arrays, tiny_zap_classifier
from zapopt.errors import ZapoptError
from zapopt.files import save_model_atomically
from zapopt.finetuning import FinetuneConfig, finetune
from zapopt.finetuning.rethreshold import node_predictor, rechoose_thresholds
from zapopt.model_form import convert_model
from zapopt.ops.spec import is_zap_node
from zapopt.runtime import make_session, native_library, prepare

TRAIN = dict(epochs=2, lr=0.05, batch_size=16)


@pytest.fixture()
def tiny(tmp_path: Path) -> dict[str, str]:
    save_model_atomically(tiny_zap_classifier(), tmp_path / "tiny.onnx")
    for name, seed, count in (("train", 1, 96), ("val", 5, 64), ("calib", 6, 64), ("fresh", 7, 64)):
        x, y = tiny_labeled_arrays(count, seed=seed)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    return {name: str(tmp_path / f"{name}.npz") for name in ("train", "val", "calib", "fresh")} | {
        "model": str(tmp_path / "tiny.onnx"), "out": str(tmp_path / "out.onnx"), "dir": str(tmp_path)}


def _predictor_arrays(model: onnx.ModelProto) -> list[np.ndarray]:
    (node,) = [n for n in model.graph.node if is_zap_node(n)]
    return list(node_predictor(model, node))


def _best_savings(model: onnx.ModelProto, images: str, max_error: float) -> float:
    """conv2's best MAC savings at <= ``max_error`` activation mass lost, with the model's own
    predictor, measured on ``images`` (the kept-predictor re-choice measures every image)."""
    found = rechoose_thresholds(model, images, images, 50.0, calib_images=64, sensitivity_weighting=False,
                                progress=False)
    curve = found.result.curves["conv2"]
    return float(curve.savings[curve.error <= max_error].max())


def test_refitted_predictors_predict_the_tuned_weights_zeros_better(tiny: dict[str, str]) -> None:
    tuned_path = str(Path(tiny["dir"]) / "tuned.onnx")  # the penalty moves the zeros the stale predictor learned
    finetune(tiny["model"], tuned_path, tiny["train"], config=FinetuneConfig(activation_l1=1.0, **TRAIN),
             progress=False, log=lambda _m: None)
    tuned = onnx.load(tuned_path)
    found = rechoose_thresholds(tuned, tiny["calib"], tiny["val"], 5.0, calib_images=64,
                                sensitivity_weighting=False, refit_predictors=True, progress=False)
    assert found.refitted and found.drop is not None and found.drop <= 5.0
    refitted = found.model
    assert all(not np.array_equal(a, b) for a, b in zip(_predictor_arrays(tuned), _predictor_arrays(refitted)))
    old, new = ({i.name: numpy_helper.to_array(i) for i in m.graph.initializer} for m in (tuned, refitted))
    (old_node,), (new_node,) = ([n for n in m.graph.node if is_zap_node(n)] for m in (tuned, refitted))
    for a, b in zip(old_node.input[1:3], new_node.input[1:3]):
        assert np.array_equal(old[a], new[b])  # the trained weights are kept as they are
    # same weights, same unseen images: the refitted predictor skips more at the same error
    assert _best_savings(refitted, tiny["fresh"], 0.05) > _best_savings(tuned, tiny["fresh"], 0.05) + 0.02


def test_finetune_refits_and_writes_a_model_both_forms_run(tiny: dict[str, str]) -> None:
    report = finetune(tiny["model"], tiny["out"], tiny["train"], val=tiny["val"], calib=tiny["calib"], max_drop=5.0,
                      config=FinetuneConfig(refit_predictors=True, **TRAIN), progress=False, log=lambda _m: None)
    assert report.thresholds["predictors"] == "refitted" and report.thresholds["drop"] <= 5.0
    assert report.config["refit_predictors"] is True
    assert "predictors refitted, thresholds re-chosen" in report.format_table()
    written = onnx.load(tiny["out"])
    before = onnx.load(tiny["model"])
    assert all(not np.array_equal(a, b) for a, b in zip(_predictor_arrays(before), _predictor_arrays(written)))
    x, _ = tiny_labeled_arrays(8, seed=9)
    portable = make_session(convert_model(written, "portable")).run(None, {"input": x})[0]
    assert np.isfinite(portable).all()
    if native_library() is not None:
        native = make_session(prepare(written, native=True).model).run(None, {"input": x})[0]
        np.testing.assert_allclose(native, portable, rtol=1e-4, atol=1e-4)


def test_refit_without_max_drop_is_refused_before_training(tiny: dict[str, str],
                                                           capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ZapoptError, match="--refit-predictors .* needs --max-drop"):
        finetune(tiny["model"], tiny["out"], tiny["train"], val=tiny["val"], calib=tiny["calib"],
                 config=FinetuneConfig(refit_predictors=True, **TRAIN), progress=False)
    assert not Path(tiny["out"]).exists() and not Path(tiny["out"] + ".ckpt").exists()
    with pytest.raises(ZapoptError, match="refit_predictors must be True or False"):
        FinetuneConfig(refit_predictors="yes")
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", tiny["model"], "--data", tiny["train"], "--val", tiny["val"], "--calib", tiny["calib"],
              "-o", tiny["out"], "--refit-predictors"])
    assert exit_info.value.code == 2
    assert "--refit-predictors trains new predictors" in capsys.readouterr().err
    assert not Path(tiny["out"]).exists()


def test_refit_may_change_on_resume(tiny: dict[str, str]) -> None:
    """The refit acts after training, so a checkpoint made without it resumes with it."""
    finetune(tiny["model"], tiny["out"], tiny["train"], config=FinetuneConfig(**TRAIN), progress=False,
             log=lambda _m: None)
    report = finetune(tiny["model"], tiny["out"], tiny["train"], val=tiny["val"], calib=tiny["calib"], max_drop=5.0,
                      resume=True, config=FinetuneConfig(refit_predictors=True, **(TRAIN | {"epochs": 3})),
                      progress=False, log=lambda _m: None)
    assert [h.epoch for h in report.state.history] == [1, 2, 3] and report.thresholds["predictors"] == "refitted"
