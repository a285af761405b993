"""`zapopt data fetch` and `zapopt data info` through the real entry point."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import cli
from zapopt.data.catalog import IDX_FILE_STEMS
from zapopt.data.idx import write_idx


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def fmnist_model(path: Path, channels: int = 1) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, 28, 28])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels, 28, 28])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_info_with_model_shows_converted_data(tmp_path: Path, capsys) -> None:
    code, out, err = run(["data", "info", "embedded:fashion-mnist-test", "--model",
                          str(fmnist_model(tmp_path / "m.onnx")), "--limit", "50"], capsys)
    assert code == 0, err
    assert "samples: 50" in out
    assert "shape:   [N, 1, 28, 28]" in out and "dtype:   float32" in out
    assert "range:   0 .. 1" in out and "labels:  yes" in out
    assert "fits input 'input' float32 [N, 1, 28, 28]" in out


def test_info_without_model_shows_stored_data(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", np.full((3, 4, 5), 7, dtype=np.int16))
    code, out, _ = run(["data", "info", str(tmp_path / "x.npy")], capsys)
    assert code == 0
    assert "samples: 3" in out and "[N, 4, 5]" in out and "int16" in out and "range:   7 .. 7" in out
    assert "labels:  none" in out


def test_info_mismatch_is_one_error_line(tmp_path: Path, capsys) -> None:
    model = fmnist_model(tmp_path / "m.onnx", channels=3)
    code, out, err = run(["data", "info", "embedded:fashion-mnist-test", "--model", str(model)], capsys)
    assert code == cli.EXIT_USER_ERROR
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "float32 [N, 3, 28, 28]" in err and "uint8" in err


def test_info_image_flags_reach_the_pipeline(tmp_path: Path, capsys) -> None:
    pytest.importorskip("skimage")
    code, out, err = run(["data", "info", "embedded:photos", "--imagenet", "--crop", "32", "--layout", "NCHW"],
                         capsys)
    assert code == 0, err
    assert "[N, 3, 32, 32]" in out and "float32" in out
    code, _, err = run(["data", "info", "embedded:photos", "--mean", "a,b"], capsys)
    assert code == cli.EXIT_USER_ERROR and "--mean takes" in err


def test_fetch_mnist_from_directory(tmp_path: Path, capsys, monkeypatch) -> None:
    from zapopt.data import catalog
    import dataclasses

    spec = catalog.DATASETS["mnist"]
    monkeypatch.setitem(catalog.DATASETS, "mnist", dataclasses.replace(spec, train_size=3, test_size=2))
    source = tmp_path / "src"
    source.mkdir()
    for split, (image_stem, label_stem) in IDX_FILE_STEMS.items():
        n = 3 if split == "train" else 2
        write_idx(source / image_stem, np.zeros((n, 28, 28), np.uint8))
        write_idx(source / label_stem, np.arange(n, dtype=np.uint8))
    code, out, err = run(["data", "fetch", "mnist", "--from", str(source), "--dest", str(tmp_path / "dst")], capsys)
    assert code == 0, err
    assert "mnist: copied" in out and str(tmp_path / "dst") in out
    assert len(list((tmp_path / "dst").iterdir())) == 4
    code, out, err = run(["data", "fetch", "mnist", "--dest", str(tmp_path / "dst2")], capsys)
    assert code == cli.EXIT_USER_ERROR and "--from DIR" in err


def test_fetch_rejects_unknown_names(capsys) -> None:
    code, _, err = run(["data", "fetch", "cifar10"], capsys)
    assert code != 0 and "cifar10" in err
