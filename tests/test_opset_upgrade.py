"""Models below opset 11 are converted with onnx's version converter and used only when the
converted model computes the same outputs; everything else is refused up front, with why."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.exported_graphs import plain_cnn
from zapopt.errors import ZapoptError
from zapopt.graph import load_model
from zapopt.graph.opset import default_opset, upgrade_opset


def test_opset_9_is_converted_checked_and_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.onnx"
    onnx.save(plain_cnn(9, relu6=True), str(path))
    with caplog.at_level(logging.WARNING, logger="zapopt"):
        converted = load_model(path, min_opset=11)
    assert default_opset(converted) == 11
    clips = [n for n in converted.graph.node if n.op_type == "Clip"]
    assert clips and all(len(n.input) == 3 and not n.attribute for n in clips)  # bounds became inputs
    assert "uses ONNX opset 9; converted it to opset 11" in caplog.text
    assert default_opset(onnx.load(str(path))) == 9


def test_a_model_at_a_supported_opset_is_returned_as_is() -> None:
    model = plain_cnn(13)
    assert upgrade_opset(model, "m") is model
    assert load_model(model) is model


def test_a_conversion_that_changes_the_outputs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = onnx.version_converter.convert_version

    def wrong(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        converted = real(model, target)
        w = converted.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, w.name))
        return converted

    monkeypatch.setattr(onnx.version_converter, "convert_version", wrong)
    with pytest.raises(ZapoptError, match=r"converting opset 9 to 11 changes output 'logits' \(relative difference"):
        upgrade_opset(plain_cnn(9), "old.onnx")


def test_a_model_the_converter_cannot_handle_is_refused_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        raise RuntimeError("No adapter for op Foo\nmore lines")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fails)
    with pytest.raises(ZapoptError, match=r"uses opset 9; zapopt needs opset >= 11 .*\(No adapter for op Foo\); re-export"):
        upgrade_opset(plain_cnn(9), "old.onnx")


def test_dynamic_spatial_dims_cannot_be_checked_and_are_refused() -> None:
    model = plain_cnn(9)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    with pytest.raises(ZapoptError, match="dynamic dims beyond the batch"):
        upgrade_opset(model, "old.onnx")


def test_the_one_loader_serves_data_checks_and_calibration(tmp_path: Path) -> None:
    from zapopt.calibrate import calibrate
    from zapopt.data import model_input

    model = plain_cnn(13, batch=2)
    assert model_input(model).shape == (2, 3, 12, 12)
    x = np.random.default_rng(0).standard_normal((5, 3, 12, 12)).astype(np.float32)
    with calibrate(model, {"conv1": "a1"}, [x], progress=False) as store:  # 5 samples, batches of 2
        assert store.layer_shape("conv1") == (5, 16, 12, 12)
    assert [o.name for o in model.graph.output] == ["logits"]  # the caller's model is untouched
    with pytest.raises(TypeError, match="onnx.ModelProto or a path"):
        load_model(42)  # type: ignore[arg-type]
