"""The pass framework: copies, sequencing, tags on old IR versions."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from tests.test_rewrite_replace import all_layers, image
from tests.zap_builders import chain_model, ort_run
from zapopt.errors import ZapoptError
from zapopt.rewrite import ExpandZapToOnnx, Pass, PassManager, PassResult, ReplaceWithZap, rule_of


class RenameGraph(Pass):
    name = "RenameGraph"
    requires = "nothing"

    def run(self, model: onnx.ModelProto) -> PassResult:
        model.graph.name = model.graph.name + "+"
        return PassResult(model, True)


class NoOp(Pass):
    name = "NoOp"

    def run(self, model: onnx.ModelProto) -> PassResult:
        return PassResult(model, False)


def test_pass_works_on_a_copy() -> None:
    model = chain_model()
    result = RenameGraph()(model)
    assert result.model.graph.name == "chain+" and model.graph.name == "chain"


def test_manager_chains_and_reports_modification() -> None:
    model = chain_model()
    assert PassManager([RenameGraph(), RenameGraph()])(model).model.graph.name == "chain++"
    assert not PassManager([NoOp()])(model).modified
    assert model.graph.name == "chain"
    with pytest.raises(TypeError):
        PassManager([object()])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        NoOp()(b"not a model")  # type: ignore[arg-type]


def test_old_ir_version_tags_in_doc_string_and_still_runs() -> None:
    model = chain_model(opset=13)
    model.ir_version = 7
    rewritten = ReplaceWithZap(all_layers())(model).model
    assert all(not n.metadata_props and rule_of(n) == "ReplaceWithZap" for n in rewritten.graph.node)
    expanded = ExpandZapToOnnx()(rewritten).model
    x = image(4)
    for got, want in zip(ort_run(expanded, {"input": x}), ort_run(model, {"input": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dynamic_batch_and_size_still_rewrite_and_expand() -> None:
    model = chain_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            d.dim_param = "d"
    model.graph.ClearField("value_info")
    with pytest.raises(ZapoptError, match="auto_pad=SAME_UPPER with strides \\[2, 2\\].*static input shapes"):
        ReplaceWithZap(all_layers())(model)
    layers = {k: v for k, v in all_layers(-math.inf).items() if k != "conv3"}
    expanded = PassManager([ReplaceWithZap(layers), ExpandZapToOnnx(expose_masks=True)])(model).model
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 6)).astype(np.float32)
    got = ort_run(expanded, {"input": x})
    want = ort_run(model, {"input": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert got[2].shape == (2, 4, 10, 6) and got[2].all()
