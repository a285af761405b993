"""Graphs shaped like real exports optimize, run, and compute the original exactly when the
thresholds compute everything (issue 15: fixed batch, old opsets, NHWC, Pad, ReLU6, groups)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.exported_graphs import (grouped_asymmetric, nhwc_cnn, pad_then_conv, plain_cnn, random_inputs,
                                   residual_dynamic_batch)
from zapopt.optimize import OptimizeConfig, ThresholdChoice, build_zap_model, finish, prepare_layers
from zapopt.rewrite.zap_layers import read_zap_layers
from zapopt.runtime import fixed_batch_size, make_session, prepare, run_batch

CASES = {
    "fixed-batch-1-opset-9": lambda: plain_cnn(9),
    "fixed-batch-1-opset-11": lambda: plain_cnn(11),
    "fixed-batch-1-opset-13": lambda: plain_cnn(13),
    "fixed-batch-1-opset-17": lambda: plain_cnn(17),
    "relu6-clip-attributes-opset-9": lambda: plain_cnn(9, batch="N", relu6=True),
    "relu6-clip-constant-inputs-opset-13": lambda: plain_cnn(13, batch="N", relu6=True),
    "nhwc-input-leading-transpose": nhwc_cnn,
    "pad-before-conv": pad_then_conv,
    "grouped-conv-no-bias-asymmetric-pads": grouped_asymmetric,
    "residual-blocks-dynamic-batch": residual_dynamic_batch,
}
#: Fewest calibration images optimize takes; kept low so these tests stay fast.
CALIBRATION_IMAGES = 8


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's first output on ``x`` in stock onnxruntime (ZapConv nodes expanded)."""
    session = make_session(prepare(model).model)
    name = session.get_inputs()[0].name
    return run_batch(session, name, x, [session.get_outputs()[0].name], fixed_batch_size(session))[0]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("build", CASES.values(), ids=CASES.keys())
def test_exported_graph_optimizes_runs_and_computes_everything_exactly(build, tmp_path: Path) -> None:
    model = build()
    path, calib = tmp_path / "model.onnx", tmp_path / "calib.npy"
    onnx.save(model, str(path))
    np.save(calib, random_inputs(model, CALIBRATION_IMAGES))
    config = OptimizeConfig(calib_images=CALIBRATION_IMAGES, epochs=1, max_epoch_scale=1, latency_check=False)
    prepared = prepare_layers(str(path), str(calib), config=config, progress=False)
    assert prepared.trained, "no layer was rewritten"
    x = random_inputs(model, 3, seed=1)
    want = run(model, x)

    exact = build_zap_model(prepared.original, prepared.trained, {name: -1e30 for name in prepared.trained})
    assert len(read_zap_layers(exact)) == len(prepared.trained)
    assert relative_error(run(exact, x), want) <= 1e-5

    # What optimize writes, in both formats, loads and runs (the portable one on stock onnxruntime).
    choice = ThresholdChoice({name: config.uniform_threshold for name in prepared.trained}, [], None)
    for output_format in ("zap", "onnx"):
        result = finish(prepared, choice, replace(config, output_format=output_format), model_name=str(path))
        written = tmp_path / f"out.{output_format}.onnx"
        onnx.save(result.model, str(written))
        onnx.checker.check_model(str(written))
        got = run(onnx.load(str(written)), x)
        assert got.shape == want.shape and np.isfinite(got).all()
        assert result.report.agreement is not None and result.report.agreement.images == 2


def test_old_opset_is_converted_and_the_output_says_so(tmp_path: Path) -> None:
    path, calib = tmp_path / "model.onnx", tmp_path / "calib.npy"
    model = plain_cnn(9)
    onnx.save(model, str(path))
    np.save(calib, random_inputs(model, CALIBRATION_IMAGES))
    prepared = prepare_layers(str(path), str(calib), config=OptimizeConfig(calib_images=8, epochs=1),
                              progress=False)
    opsets = {o.domain: o.version for o in prepared.original.opset_import}
    assert opsets[""] == 11
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 9  # input untouched


def test_fixed_batch_pads_the_last_batch_and_drops_its_outputs() -> None:
    model = plain_cnn(13, batch=4)
    session = make_session(model)
    x = random_inputs(model, 10)
    assert fixed_batch_size(session) == 4
    got = run_batch(session, "input", x, ["logits"], 4)[0]
    one_by_one = np.concatenate([session.run(["logits"], {"input": np.repeat(x[i:i + 1], 4, 0)})[0][:1]
                                 for i in range(10)])
    assert got.shape == (10, 10)
    np.testing.assert_allclose(got, one_by_one, rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(got.sum()))
