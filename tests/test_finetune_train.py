"""`zapopt finetune`: refusals before training, training, checkpoints/resume, gradtools, export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from cli import main
from tests.finetune_models import tiny_labeled_arrays, tiny_zap_classifier
from zapopt.errors import ZapoptError
from zapopt.files import save_model_atomically
from zapopt.finetuning import FinetuneConfig, finetune
from zapopt.rewrite.zap_layers import read_zap_layers
from zapopt.runtime import make_session, prepare

FAST = dict(lr=0.05, batch_size=16)


@pytest.fixture()
def tiny(tmp_path: Path) -> dict[str, str]:
    model = tmp_path / "tiny.zap.onnx"
    save_model_atomically(tiny_zap_classifier(), model)
    x, y = tiny_labeled_arrays(96, seed=1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    vx, vy = tiny_labeled_arrays(64, seed=2)
    np.savez(tmp_path / "val.npz", x=vx, y=vy)
    return {"model": str(model), "train": str(tmp_path / "train.npz"), "val": str(tmp_path / "val.npz"),
            "out": str(tmp_path / "tuned.onnx")}


def _weights(path: str) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def test_training_improves_and_keeps_the_format(tiny: dict[str, str]) -> None:
    before_bytes = Path(tiny["model"]).read_bytes()
    report = finetune(tiny["model"], tiny["out"], tiny["train"], val=tiny["val"],
                      config=FinetuneConfig(epochs=4, **FAST), progress=False, log=lambda _m: None)
    assert Path(tiny["model"]).read_bytes() == before_bytes  # input never touched
    history = report.state.history
    assert [h.epoch for h in history] == [1, 2, 3, 4]
    assert history[-1].train_loss < history[0].train_loss
    assert report.after.top1 > report.before.top1
    assert 0 < report.after.savings < 1
    tuned, original = onnx.load(tiny["out"]), onnx.load(tiny["model"])
    assert [(z.name, z.attrs) for z in read_zap_layers(tuned)] == [(z.name, z.attrs) for z in read_zap_layers(original)]
    old, new = _weights(tiny["model"]), _weights(tiny["out"])
    zap = next(n for n in tuned.graph.node if n.op_type == "ZapConv")
    assert not np.array_equal(old[zap.input[1]], new[zap.input[1]])  # W trained
    assert all(np.array_equal(old[name], new[name]) for name in zap.input[3:7])  # predictor kept
    assert Path(tiny["out"] + ".report.json").is_file() and Path(tiny["out"] + ".ckpt").is_file()


def test_resume_continues_exactly(tiny: dict[str, str], tmp_path: Path) -> None:
    straight = str(tmp_path / "straight.onnx")
    finetune(tiny["model"], straight, tiny["train"], config=FinetuneConfig(epochs=2, **FAST), progress=False,
             log=lambda _m: None)
    first = finetune(tiny["model"], tiny["out"], tiny["train"], config=FinetuneConfig(epochs=1, **FAST),
                     progress=False, log=lambda _m: None)
    resumed = finetune(tiny["model"], tiny["out"], tiny["train"], config=FinetuneConfig(epochs=2, **FAST),
                       resume=True, progress=False, log=lambda _m: None)
    assert len(first.state.history) == 1 and [h.epoch for h in resumed.state.history] == [1, 2]
    a, b = _weights(straight), _weights(tiny["out"])
    assert all(np.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)
    with pytest.raises(ZapoptError, match="other settings"):
        finetune(tiny["model"], tiny["out"], tiny["train"], config=FinetuneConfig(epochs=3, lr=0.01, batch_size=16),
                 resume=True, progress=False)


@pytest.mark.parametrize("tools", [dict(grad_sparsity=0.85), dict(grad_bits=6), dict(grad_format=(5, 2))])
def test_gradient_tools_run_on_the_backward_pass(tiny: dict[str, str], tools: dict) -> None:
    plain = finetune(tiny["model"], tiny["out"], tiny["train"], config=FinetuneConfig(epochs=1, **FAST),
                     progress=False, log=lambda _m: None)
    plain_weights = _weights(tiny["out"])
    report = finetune(tiny["model"], tiny["out"], tiny["train"], config=FinetuneConfig(epochs=1, **FAST, **tools),
                      progress=False, log=lambda _m: None)
    assert ("GradientPruner" if "grad_sparsity" in tools else "GradientQuantizer") in report.state.gradient_summary
    assert not plain.state.gradient_summary
    changed = _weights(tiny["out"])
    assert any(not np.array_equal(plain_weights[k], changed[k]) for k in plain_weights)


def _mean_zap_activation(model: str, x: np.ndarray) -> float:
    """Mean ZapConv activation (before the mask) of the torch form of ``model`` on ``x``."""
    import torch

    from zapopt.finetuning.convert import to_torch

    module = to_torch(onnx.load(model)).train()
    with torch.no_grad():
        module(torch.from_numpy(x))
    return float(np.mean([float(z.last_activation.mean()) for z in module.zap_layers().values()]))


def test_activation_l1_makes_the_zap_activations_sparser(tiny: dict[str, str], tmp_path: Path) -> None:
    x = np.load(tiny["train"])["x"]
    plain, sparse = str(tmp_path / "plain.onnx"), str(tmp_path / "sparse.onnx")
    finetune(tiny["model"], plain, tiny["train"], config=FinetuneConfig(epochs=2, **FAST), progress=False,
             log=lambda _m: None)
    report = finetune(tiny["model"], sparse, tiny["train"], config=FinetuneConfig(epochs=2, activation_l1=5.0, **FAST),
                      progress=False, log=lambda _m: None)
    assert report.config["activation_l1"] == 5.0
    assert _mean_zap_activation(sparse, x) < 0.5 * _mean_zap_activation(plain, x)
    with pytest.raises(ZapoptError, match="--activation-l1 must be a number >= 0"):
        FinetuneConfig(activation_l1=-1.0)


def test_class_folders_give_labels(tiny: dict[str, str], tmp_path: Path) -> None:
    x, y = tiny_labeled_arrays(30, seed=3)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = tmp_path / "images" / ["bottom", "middle", "top"][label]  # sorted names = class order
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(image[0], 0, 1) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    report = finetune(tiny["model"], tiny["out"], str(tmp_path / "images"), config=FinetuneConfig(epochs=1, **FAST),
                      progress=False, log=lambda _m: None)
    assert report.state.history[0].images == 30
    (tmp_path / "images" / "zz-extra").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "zz-extra" / "a.png")
    with pytest.raises(ZapoptError, match="4 class folders but the model has 3 outputs"):
        finetune(tiny["model"], tiny["out"], str(tmp_path / "images"), progress=False)


def test_refusals_before_training(tiny: dict[str, str], tmp_path: Path) -> None:
    x, y = tiny_labeled_arrays(16)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ZapoptError, match="no labels"):
        finetune(tiny["model"], tiny["out"], str(tmp_path / "x.npy"), progress=False)
    np.savez(tmp_path / "wide.npz", x=x, y=y + 5)
    with pytest.raises(ZapoptError, match="labels from 5 to 7 but the model has 3 outputs"):
        finetune(tiny["model"], tiny["out"], str(tmp_path / "wide.npz"), progress=False)
    plain = onnx.load(tiny["model"])
    plain.graph.node[2].op_type = "LeakyRelu"  # an op the converter does not know; no ZapConv left
    del plain.graph.node[2].attribute[:]
    save_model_atomically(plain, tmp_path / "odd.onnx")
    with pytest.raises(ZapoptError, match="has no ZapConv layers"):
        finetune(str(tmp_path / "odd.onnx"), tiny["out"], tiny["train"], progress=False)
    with pytest.raises(ZapoptError, match="input file"):
        finetune(tiny["model"], tiny["model"], tiny["train"], progress=False)
    with pytest.raises(ZapoptError, match="no checkpoint"):
        finetune(tiny["model"], tiny["out"], tiny["train"], resume=True, progress=False)
    assert not Path(tiny["out"]).exists()


def test_cli_finetune_then_eval_sweep_retune(tiny: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        return exit_info.value.code

    assert run("finetune", tiny["model"], "--data", tiny["train"], "--val", tiny["val"], "-o", tiny["out"],
               "--lr", "0.05", "--batch-size", "16", "--grad-format", "4,3", "--curve", "0,0.1", "-q") == 0
    out = capsys.readouterr().out
    assert "before" in out and "after" in out and "GradientQuantizer" in out
    assert run("eval", tiny["out"], "--data", tiny["val"], "-q") == 0
    assert run("sweep", tiny["out"], "--data", tiny["val"], "--thresholds", "0,0.5", "-q") == 0
    assert run("retune", tiny["out"], "-o", tiny["out"] + ".r.onnx", "--threshold", "0.3") == 0
    x, _ = tiny_labeled_arrays(4)
    session = make_session(prepare(onnx.load(tiny["out"] + ".r.onnx")).model)
    assert np.isfinite(session.run(None, {"input": x})[0]).all()
    capsys.readouterr()
    assert run("finetune", tiny["model"], "--data", tiny["train"], "-o", tiny["out"], "--grad-format", "x") == 2
    assert "--grad-format expects E,M" in capsys.readouterr().err
    assert run("finetune", tiny["model"], "--data", tiny["train"], "--val", tiny["val"], "-o", tiny["out"] + ".op",
               "--operating-drop", "5") == 2  # reaches FinetuneConfig and the API's check
    assert "--operating-drop chooses the thresholds to train at: it needs" in capsys.readouterr().err
    assert run("finetune", tiny["model"], "--data", tiny["train"], "-o", tiny["out"] + ".l1", "--activation-l1", "0.5",
               "--json", "-q") == 0
    assert '"activation_l1": 0.5' in capsys.readouterr().out


def test_log_lines_when_not_a_terminal(tiny: dict[str, str]) -> None:
    lines: list[str] = []
    finetune(tiny["model"], tiny["out"], tiny["train"], val=tiny["val"], config=FinetuneConfig(epochs=1, **FAST),
             progress=None, log=lines.append)  # pytest's stderr is not a terminal
    batches = [line for line in lines if "batch" in line]
    assert batches[-1].startswith("epoch 1/1: batch 6/6, loss ") and "accuracy" in batches[-1]
    assert any(line.startswith("epoch 1/1: loss") and "validation top-1" in line for line in lines)


def test_public_function_is_not_shadowed_by_its_package() -> None:
    import zapopt
    import zapopt.finetuning.api  # noqa: F401  (importing the package first must not hide the function)

    assert zapopt.finetune is finetune and zapopt.FinetuneConfig is FinetuneConfig
