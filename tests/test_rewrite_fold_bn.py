"""FoldBatchNorm: same outputs, fewer nodes, tagged, input untouched."""
from __future__ import annotations

import numpy as np
import pytest

from tests.zap_builders import chain_model, ort_run
from zapopt.errors import ZapoptError
from zapopt.rewrite import FoldBatchNorm, rule_of
from zapopt.rewrite.fold_bn import BatchNormParams, fold_batchnorm


def test_folding_every_bn_keeps_outputs() -> None:
    model = chain_model()
    original = model.SerializeToString()
    result = FoldBatchNorm()(model)
    assert result.modified and model.SerializeToString() == original
    ops = [n.op_type for n in result.model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3
    folded = [n for n in result.model.graph.node if rule_of(n) == "FoldBatchNorm"]
    assert [n.name for n in folded] == ["conv1", "conv2"]
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for got, want in zip(ort_run(result.model, {"input": x}), ort_run(model, {"input": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    names = {t.name for t in result.model.graph.initializer}
    assert not any(n.startswith(("bn1.", "bn2.")) for n in names) and "w1" not in names


def test_fold_one_named_layer() -> None:
    result = FoldBatchNorm(["conv2"])(chain_model())
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("BatchNormalization") == 1


def test_nothing_to_fold_is_not_a_modification() -> None:
    once = FoldBatchNorm()(chain_model()).model
    assert not FoldBatchNorm()(once).modified


def test_named_layer_without_bn_is_an_error() -> None:
    with pytest.raises(ZapoptError, match="conv3.*BatchNormalization"):
        FoldBatchNorm(["conv3"])(chain_model())


def test_fold_formula() -> None:
    w = np.ones((2, 1, 1, 1), np.float32)
    bn = BatchNormParams(scale=np.array([2.0, 1.0]), bias=np.array([0.5, 0.0]), mean=np.array([1.0, -1.0]),
                         var=np.array([3.0, 0.0]), epsilon=1.0)
    w2, b2 = fold_batchnorm(w, np.array([1.0, 1.0], np.float32), bn)
    np.testing.assert_allclose(w2.ravel(), [1.0, 1.0])
    np.testing.assert_allclose(b2, [0.5, 2.0])
