"""What a new user with their own exported model and a folder of photos sees (issue 15):
fixed-batch models work everywhere, too little data is refused or warned about with the
reason, the agreement with the original is printed after every optimize, `zapopt info`
counts ZAP layers, progress shows in logs, and the help says what the options do."""
from __future__ import annotations

import json
import re
from collections import namedtuple
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from tests.exported_graphs import plain_cnn, random_inputs
from zapopt.errors import ZapoptError

OPTIMIZE = ["--calib-images", "16", "--epochs", "1", "--max-epoch-scale", "1", "--no-latency-check"]


def invoke(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory) -> dict[str, Path]:
    """A batch-1 opset-13 model (torch.onnx.export without dynamic_axes), 32 samples, optimized."""
    root = tmp_path_factory.mktemp("fixed")
    model = plain_cnn(13, batch=1)
    paths = {"model": root / "model.onnx", "data": root / "data.npy", "zap": root / "model.zap.onnx",
             "portable": root / "model.portable.onnx"}
    onnx.save(model, str(paths["model"]))
    np.save(paths["data"], random_inputs(model, 32))
    result = invoke("optimize", paths["model"], "-o", paths["zap"], "--calib", paths["data"], *OPTIMIZE)
    assert result.exit_code == 0, (result.output, result.exception)
    paths["optimize_stdout"] = result.stdout
    paths["optimize_stderr"] = result.stderr
    result = invoke("optimize", paths["model"], "-o", paths["portable"], "--calib", paths["data"], *OPTIMIZE,
                    "--format", "onnx", "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    return paths


def test_fixed_batch_model_optimizes_and_prints_its_agreement_last(fixed_batch) -> None:
    lines = fixed_batch["optimize_stdout"].strip().splitlines()
    headline = next(line for line in lines if line.startswith("AGREEMENT WITH THE ORIGINAL"))
    assert re.search(r"on 4 held-out calibration images: \d of 4 keep their top-1 class", headline)
    assert lines[-1] == headline and lines[-2].startswith("wrote ")  # the very last line
    report = json.loads(Path(f"{fixed_batch['zap']}.report.json").read_text())
    assert report["held_out_agreement"]["images"] == 4


def test_fixed_batch_model_evaluates_and_sweeps_with_any_batch_size(fixed_batch) -> None:
    result = invoke("eval", fixed_batch["zap"], "--data", fixed_batch["data"], "--reference", fixed_batch["model"],
                    "--batch-size", "5", "--json", "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report["samples"] == 32 and report["agreement"] is not None
    result = invoke("sweep", fixed_batch["zap"], "--data", fixed_batch["data"], "--thresholds", "-inf,0.5",
                    "--batch-size", "7", "--json", "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    points = json.loads(result.stdout)["points"]
    assert points[0]["agreement"] == 1.0  # -inf computes everything


def test_progress_prints_lines_when_stderr_is_not_a_terminal(fixed_batch) -> None:
    err = fixed_batch["optimize_stderr"]
    assert "calibrate: started (16 img)" in err
    assert re.search(r"calibrate: 16/16 \(100%\) img, \d+ s \(done\)", err)
    assert "predictors: started" in err and "\r" not in err


def test_info_counts_zapconv_layers_in_both_formats(fixed_batch) -> None:
    original = json.loads(invoke("info", fixed_batch["model"], "--json").stdout)
    for key in ("zap", "portable"):
        result = invoke("info", fixed_batch[key])
        assert result.exit_code == 0, (result.output, result.exception)
        assert re.search(r"ZAP layers: 2, as " + ("ZapConv nodes" if key == "zap" else "the portable expansion"),
                         result.stdout)
        assert "conv1" in result.stdout and "conv2" in result.stdout
        info = json.loads(invoke("info", fixed_batch[key], "--json").stdout)["zap"]
        assert info["full_macs"] == original["total_macs"]  # neither 25 % fewer nor more than the original
        report = json.loads(Path(f"{fixed_batch['zap']}.report.json").read_text())
        assert info["expected_macs"] == pytest.approx(report["macs_after"])
        assert "expected with a ZapConv kernel that skips" in result.stdout


def test_three_image_folder_is_refused_with_the_reason(tmp_path: Path) -> None:
    onnx.save(plain_cnn(13, batch="N"), str(tmp_path / "model.onnx"))
    (tmp_path / "photos").mkdir()
    for k in range(3):
        Image.fromarray(np.full((12, 12, 3), 40 * k, np.uint8)).save(tmp_path / "photos" / f"{k}.png")
    result = invoke("optimize", tmp_path / "model.onnx", "-o", tmp_path / "out.onnx", "--calib", tmp_path / "photos",
                    "--mean", "0.5", "--std", "0.25")
    assert isinstance(result.exception, ZapoptError)
    assert "has 3 images; optimize needs at least 8" in str(result.exception)
    assert not (tmp_path / "out.onnx").exists()


def test_image_size_hint_also_suggests_normalization(tmp_path: Path) -> None:
    onnx.save(plain_cnn(13, batch="N"), str(tmp_path / "model.onnx"))
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    result = invoke("data", "info", tmp_path / "photos", "--model", tmp_path / "model.onnx")
    message = str(result.exception)
    assert "--resize/--crop" in message and "--imagenet" in message and "--mean" in message


def test_unnormalized_color_photos_are_warned_about(tmp_path: Path) -> None:
    onnx.save(plain_cnn(13, batch="N"), str(tmp_path / "model.onnx"))
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    result = invoke("data", "info", tmp_path / "photos", "--model", tmp_path / "model.onnx")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "without mean/std normalization" in result.stderr and "--imagenet" in result.stderr
    result = invoke("data", "info", tmp_path / "photos", "--model", tmp_path / "model.onnx", "--imagenet",
                    "--crop", "12")
    assert "normalization" not in result.stderr


def test_max_drop_on_few_eval_images_warns_that_one_image_is_too_coarse(tmp_path: Path) -> None:
    model = plain_cnn(13, batch="N")
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", random_inputs(model, 16))
    np.save(tmp_path / "eval.npy", random_inputs(model, 27, seed=3))
    result = invoke("optimize", tmp_path / "model.onnx", "-o", tmp_path / "out.onnx", "--calib",
                    tmp_path / "calib.npy", *OPTIMIZE, "--max-drop", "1", "--eval", tmp_path / "eval.npy",
                    "--no-sensitivity", "-q")
    assert "one image is 3.7 points of top-1 disagreement" in result.stderr, (result.output, result.exception)
    assert "Use at least 100 --eval images" in result.stderr


def test_large_activation_loss_is_warned_per_layer_pointing_to_max_drop(tmp_path: Path) -> None:
    model = plain_cnn(13, batch="N")
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", random_inputs(model, 16))
    result = invoke("optimize", tmp_path / "model.onnx", "-o", tmp_path / "out.onnx", "--calib",
                    tmp_path / "calib.npy", *OPTIMIZE, "--threshold", "1000", "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    assert re.search(r"warning: layer conv1 loses \d+\.\d% of its activation mass at threshold 1000", result.stderr)
    assert "--max-drop" in result.stderr
    report = json.loads((tmp_path / "out.onnx.report.json").read_text())
    assert any("conv1 loses" in w for w in report["warnings"])


def test_calibration_refuses_to_start_without_the_disk_space_it_needs(tmp_path: Path, monkeypatch) -> None:
    import zapopt.data_checks as checks

    model = plain_cnn(13, batch="N")
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", random_inputs(model, 16))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    result = invoke("optimize", tmp_path / "model.onnx", "-o", tmp_path / "out.onnx", "--calib",
                    tmp_path / "calib.npy", *OPTIMIZE)
    # conv1's and conv2's activations (conv0 is the first layer): 16 x 12 x 12 float32 each, 16 images
    assert "295 kB for 16 images (18 kB per image)" in str(result.exception)
    assert "has only 1 kB free" in str(result.exception)


@pytest.mark.parametrize("args, wanted, unwanted", [
    (["eval", "--help"], ["fixed batch size"], []),
    (["sweep", "--help"], ["--batch-size"], []),
    (["optimize", "--help"], ["image folder", "differs from the original"], []),
    (["data", "fetch", "--help"], ["t10k-images-idx3-ubyte", "pass that folder here"], ["no allowed registry"]),
])
def test_help_texts_say_what_the_options_do(args, wanted, unwanted) -> None:
    text = " ".join(invoke(*args).stdout.split())
    for phrase in wanted:
        assert phrase in text, phrase
    for phrase in unwanted:
        assert phrase not in text, phrase


def test_info_falls_back_to_the_report_beside_the_model(fixed_batch, tmp_path: Path) -> None:
    model = onnx.load(str(fixed_batch["zap"]))
    kept = [entry for entry in model.metadata_props if entry.key != "zapopt.expected_macs"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    assert json.loads(invoke("info", bare, "--json").stdout)["zap"]["expected_macs"] is None
    report = Path(f"{fixed_batch['zap']}.report.json")
    Path(f"{bare}.report.json").write_text(report.read_text())
    info = json.loads(invoke("info", bare, "--json").stdout)["zap"]
    assert info["expected_macs"] == pytest.approx(json.loads(report.read_text())["macs_after"])


def test_a_max_drop_of_zero_with_zero_standard_error_is_not_presented_as_certain() -> None:
    from zapopt.report import OptimizeReport

    report = OptimizeReport(model="m", output=None, pattern="checkerboard", selection="max accuracy drop 1%",
                            calibration_images=16, curve_images=4, total_macs=100, layers=[], skipped=[],
                            measured_drop=0.0, drop_standard_error=0.0)
    text = report.format_table()
    assert "standard error 0.00 only because no prediction changed" in text
    assert "+- 0.00" not in text
