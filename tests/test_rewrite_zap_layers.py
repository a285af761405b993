"""SetThresholds and read_zap_layers: retuning without retraining."""
from __future__ import annotations

import math

import onnx
import pytest

from tests.test_rewrite_replace import all_layers, image
from tests.zap_builders import chain_model
from zapopt.errors import ZapoptError
from zapopt.ops import reference_session
from zapopt.rewrite import ReplaceWithZap, SetThresholds, read_zap_layers


@pytest.fixture(scope="module")
def zap_model() -> onnx.ModelProto:
    return ReplaceWithZap(all_layers(-math.inf))(chain_model()).model


def test_set_thresholds_changes_only_named_layers(zap_model: onnx.ModelProto) -> None:
    before = zap_model.SerializeToString()
    result = SetThresholds({"conv2": 0.5, "conv3": math.inf})(zap_model)
    assert result.modified and zap_model.SerializeToString() == before
    thresholds = {layer.name: layer.threshold for layer in read_zap_layers(result.model)}
    assert thresholds == {"conv1": -math.inf, "conv2": 0.5, "conv3": math.inf}
    onnx.checker.check_model(result.model)


def test_threshold_changes_the_output(zap_model: onnx.ModelProto) -> None:
    x = image(2)
    exact = reference_session(zap_model).run(None, {"input": x})[0]
    skipping = reference_session(SetThresholds({"conv3": math.inf})(zap_model).model).run(None, {"input": x})[0]
    assert (skipping == 0).sum() > (exact == 0).sum()
    assert ((skipping == exact) | (skipping == 0)).all(), "skipping only zeroes activations"


def test_same_threshold_is_not_a_modification(zap_model: onnx.ModelProto) -> None:
    assert not SetThresholds({"conv1": -math.inf})(zap_model).modified


def test_unknown_layer_and_nan_are_refused(zap_model: onnx.ModelProto) -> None:
    with pytest.raises(ZapoptError, match="'convX'.*conv1, conv2, conv3"):
        SetThresholds({"convX": 0.0})(zap_model)
    with pytest.raises(ZapoptError, match="NaN"):
        SetThresholds({"conv1": float("nan")})


def test_read_zap_layers_on_plain_model_is_empty() -> None:
    assert read_zap_layers(chain_model()) == []
