"""``zapopt info`` through the real command line: table, JSON, input shapes, clean errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import helper

from tests.conftest import REPO_ROOT
from tests.test_graph_builders import build_model, weights


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def save_model(path: Path, x_shape) -> Path:
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["Y"], name="relu2")]
    onnx.save(build_model(nodes, {"X": x_shape}, ["Y"], {"W1": weights(16, 16, 3, 3), "W2": weights(8, 16, 1, 1)}),
              str(path))
    return path


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    return save_model(tmp_path / "model.onnx", ["N", 16, 4, 4])


def test_table(model_path: Path) -> None:
    result = run_cli("info", str(model_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "conv1" in out and "conv2" in out and "1x16x4x4" in out
    assert f"{16 * 16 * 16 * 9 + 8 * 16 * 16:,}" in out  # total MACs
    assert "assumed batch size 1" in out
    assert "yes conv1 -> relu1 [first layer]" in out
    assert "no  conv2 -> relu2: the predictor would cost 18 MACs" in out


def test_json(model_path: Path) -> None:
    result = run_cli("info", str(model_path), "--json", "--input-shape", "X:3,16,4,4")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["total_macs"] == 16 * 16 * 16 * 9 + 8 * 16 * 16 and data["batch_size"] == 3
    assert data["inputs"] == [{"name": "X", "shape": [3, 16, 4, 4], "dtype": "float32"}]
    first, second = data["convs"]
    assert first["eligible"] and first["clip_max"] is None and first["pads"] == [1, 1, 1, 1]
    assert not second["eligible"] and second["reason"]
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2"]


def test_unresolvable_shape_then_input_shape(tmp_path: Path) -> None:
    path = save_model(tmp_path / "dyn.onnx", ["N", 16, "H", "W"])
    assert_clean_error(run_cli("info", str(path)), "conv1", "--input-shape")
    assert run_cli("info", str(path), "--input-shape", "X:1,16,6,6").returncode == 0


@pytest.mark.parametrize("case", ["missing", "directory", "not_onnx", "corrupt"])
def test_bad_model_files(tmp_path: Path, model_path: Path, case: str) -> None:
    target = {"missing": tmp_path / "missing.onnx", "directory": tmp_path, "not_onnx": tmp_path / "notes.onnx",
              "corrupt": tmp_path / "corrupt.onnx"}[case]
    if case == "not_onnx":
        target.write_text("just some text\n")
    if case == "corrupt":
        data = model_path.read_bytes()
        target.write_bytes(data[: len(data) * 2 // 3])
    assert_clean_error(run_cli("info", str(target)), str(target))


def test_bad_input_shape_option(model_path: Path) -> None:
    assert_clean_error(run_cli("info", str(model_path), "--input-shape", "X=1,16,4,4"), "bad input shape")


def test_help_explains_options() -> None:
    result = run_cli("info", "--help")
    assert result.returncode == 0 and "--input-shape" in result.stdout and "--json" in result.stdout


def test_python_api_matches_the_command(model_path: Path) -> None:
    import zapopt
    from zapopt.graph import ModelInfo

    info = zapopt.info(model_path, {"X": [1, 16, 4, 4]})
    assert isinstance(info, ModelInfo) and callable(zapopt.info)
    data = json.loads(run_cli("info", str(model_path), "--json").stdout)
    assert info.to_dict()["convs"] == data["convs"] and info.total_macs == data["total_macs"]
