"""Loading models: every broken input becomes one ZapoptError naming the path; external data works."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.test_graph_builders import single_conv_model
from zapopt.errors import ZapoptError
from zapopt.graph import analyze, load_model


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "conv.onnx"
    onnx.save(single_conv_model([1, 16, 8, 8], [16, 16, 3, 3], pads=[1, 1, 1, 1]), str(path))
    return path


def test_loads_a_valid_model(model_file: Path) -> None:
    model = load_model(model_file)
    assert [n.op_type for n in model.graph.node] == ["Conv"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(ZapoptError, match="not found.*nope.onnx"):
        load_model(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ZapoptError, match="is a directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"this is a text file, not a model\n", bytes(range(256)) * 4])
def test_non_onnx_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    with pytest.raises(ZapoptError, match="junk.onnx"):
        load_model(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ZapoptError, match="does not look like an ONNX model"):
        load_model(path)


def test_truncated_protobuf(tmp_path: Path, model_file: Path) -> None:
    data = model_file.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ZapoptError, match="truncated.onnx"):
        load_model(path)


def test_model_failing_the_checker(tmp_path: Path) -> None:
    node = helper.make_node("Conv", ["X", "W_missing"], ["Y"])
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("X", 1, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("Y", 1, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ZapoptError, match="bad.onnx is not a valid ONNX model"):
        load_model(path)
    with pytest.raises(ZapoptError, match="not a valid ONNX model"):
        analyze(model)


def _save_external(tmp_path: Path) -> tuple[Path, np.ndarray]:
    model = single_conv_model([1, 16, 8, 8], [16, 16, 3, 3], pads=[1, 1, 1, 1])
    weight = numpy_helper.to_array(model.graph.initializer[0])
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)  # moves the data out of ``model``
    return path, weight


def test_external_data_model(tmp_path: Path) -> None:
    path, weight = _save_external(tmp_path)
    assert (path.parent / "weights.bin").is_file()
    loaded = load_model(path)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), weight)
    info = analyze(path)
    assert info.total_macs == 16 * 64 * 16 * 9
    assert info.convs[0].weight_shape == (16, 16, 3, 3)


def test_missing_external_data_file(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    (path.parent / "weights.bin").unlink()
    with pytest.raises(ZapoptError, match="weights.bin"):
        load_model(path)


def test_analyze_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="ModelProto or a path"):
        analyze(42)  # type: ignore[arg-type]


def test_in_memory_model_with_weights_left_on_disk(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    model = load_model(path, load_external_data=False)
    assert analyze(model).convs[0].macs == 16 * 64 * 16 * 9


def test_large_weights_are_analysed_from_their_shapes_only() -> None:
    model = single_conv_model([1, 64, 4, 4], [128, 64, 3, 3], pads=[1, 1, 1, 1])  # 73,728 weights
    before = model.SerializeToString()
    info = analyze(model)
    assert info.convs[0].weight_shape == (128, 64, 3, 3)
    assert info.total_macs == 128 * 16 * 64 * 9
    assert model.SerializeToString() == before
