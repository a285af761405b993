"""Calibration: exact ORT activations, streamed to disk, validated inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from zapopt.calibrate import CalibrationStore, calibrate, layer_outputs
from zapopt.errors import ZapoptError
from zapopt.ops.reference import conv2d


def _tiny_model(seed: int = 0, scale: float = 1.0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x[N,2,6,6] -> Conv(4) -> Relu(a1) -> Conv(3) -> Relu(a2) -> GlobalAveragePool -> Flatten."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": (rng.standard_normal((4, 2, 3, 3)) * scale).astype(np.float32),
        "b1": rng.standard_normal(4).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((3, 4, 3, 3)).astype(np.float32),
        "b2": rng.standard_normal(3).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, weights


LAYERS = {"conv1": "a1", "conv2": "a2"}


def _batches(data: np.ndarray, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_captures_exact_activations_and_logits(tmp_path: Path) -> None:
    model, w = _tiny_model()
    data = np.random.default_rng(1).standard_normal((10, 2, 6, 6)).astype(np.float32)
    before = model.SerializeToString()
    with calibrate(model, LAYERS, _batches(data, 3), workdir=tmp_path, progress=False) as store:
        assert store.num_images == 10
        assert store.layer_names == ["conv1", "conv2"]
        a1 = np.maximum(conv2d(data, w["w1"], w["b1"], pads=(1, 1, 1, 1)), 0)
        a2 = np.maximum(conv2d(a1.astype(np.float32), w["w2"], w["b2"], pads=(1, 1, 1, 1)), 0)
        assert store.layer_array("conv1").shape == (10, 4, 6, 6)
        np.testing.assert_allclose(store.layer_array("conv1"), a1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(store.layer_array("conv2"), a2, rtol=1e-4, atol=1e-4)
        logits = ort.InferenceSession(before).run(["logits"], {"x": data})[0]
        np.testing.assert_array_equal(store.logits, logits)
        assert store.output_names == ["logits"]
        assert store.tensor_name("conv2") == "a2"
    assert model.SerializeToString() == before  # the caller's proto is untouched


def test_streams_to_disk_batch_by_batch(tmp_path: Path) -> None:
    model, _ = _tiny_model()
    data = np.random.default_rng(2).standard_normal((12, 2, 6, 6)).astype(np.float32)
    seen_sizes: list[int] = []

    def watching_batches():
        for start in range(0, 12, 4):
            dirs = list(tmp_path.iterdir())
            seen_sizes.append(sum(f.stat().st_size for d in dirs for f in d.iterdir()))
            yield data[start : start + 4]

    store = calibrate(model, LAYERS, watching_batches(), workdir=tmp_path, progress=False)
    per_image = (4 * 36 + 3 * 36 + 3) * 4  # both layers plus the logits, float32
    # Each batch is on disk before the next is requested: nothing accumulates in memory.
    assert seen_sizes[1:] == [4 * per_image, 8 * per_image]
    array = store.layer_array("conv1")
    assert isinstance(array, np.memmap) and array.dtype == np.float32 and not array.flags.writeable
    assert Path(array.filename).parent == store.directory
    assert store.directory.parent == tmp_path
    store.close()
    assert not store.directory.exists()
    with pytest.raises(ZapoptError, match="closed"):
        store.layer_array("conv1")


def test_model_file_and_records_and_max_images(tmp_path: Path) -> None:
    model, _ = _tiny_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    before = path.read_bytes()

    class Record:
        def __init__(self, conv: str, output: str) -> None:
            self.conv, self.output = conv, output

    data = np.random.default_rng(3).standard_normal((9, 2, 6, 6)).astype(np.float64)
    with calibrate(path, [Record("conv2", "a2")], _batches(data, 4), max_images=5, progress=False) as store:
        assert store.num_images == 5
        assert store.layer_shape("conv2") == (5, 3, 6, 6)
        with pytest.raises(ZapoptError, match="not calibrated"):
            store.layer_array("conv1")
    assert path.read_bytes() == before


def test_rejects_bad_inputs(tmp_path: Path) -> None:
    model, _ = _tiny_model()
    good = np.zeros((2, 2, 6, 6), np.float32)
    with pytest.raises(ZapoptError, match="NaN or Inf"):
        bad = good.copy()
        bad[0, 0, 0, 0] = np.nan
        calibrate(model, LAYERS, [bad], workdir=tmp_path, progress=False)
    with pytest.raises(ZapoptError, match="not produced"):
        calibrate(model, {"conv1": "nope"}, [good], workdir=tmp_path, progress=False)
    with pytest.raises(ZapoptError, match="no images"):
        calibrate(model, LAYERS, [], workdir=tmp_path, progress=False)
    with pytest.raises(ZapoptError, match="rank"):
        calibrate(model, LAYERS, [good[0]], workdir=tmp_path, progress=False)
    with pytest.raises(ZapoptError, match="not found"):
        calibrate(tmp_path / "missing.onnx", LAYERS, [good], progress=False)
    with pytest.raises(ZapoptError):
        layer_outputs([])
    # Failed runs leave no temp directories behind.
    assert list(tmp_path.iterdir()) == []


def test_nonfinite_activation_is_an_error(tmp_path: Path) -> None:
    model, _ = _tiny_model(scale=1e30)
    data = np.full((2, 2, 6, 6), 1e30, np.float32)  # finite input, overflowing conv
    with pytest.raises(ZapoptError, match="activation of layer 'conv1'.*NaN or Inf"):
        calibrate(model, LAYERS, [data], workdir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_store_is_a_context_manager(tmp_path: Path) -> None:
    model, _ = _tiny_model()
    with calibrate(model, LAYERS, [np.ones((1, 2, 6, 6), np.float32)], workdir=tmp_path,
                   progress=False) as store:
        assert isinstance(store, CalibrationStore)
        directory = store.directory
        assert directory.exists()
    assert not directory.exists()
