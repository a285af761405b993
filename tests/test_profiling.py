"""Per-node times from onnxruntime's profiler: the median run, so that one interrupted run
does not decide a layer on a busy machine."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from zapopt.profiling import _median_per_run, profile


def test_a_node_timed_once_per_run_takes_its_median_run() -> None:
    assert _median_per_run([1.0, 9.0, 2.0], runs=3) == 2.0  # the mean would say 4.0
    assert _median_per_run([1.0, 3.0], runs=3) == 4.0 / 3  # not once per run: the mean per run


def test_a_profile_has_every_node_with_a_positive_time() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = onnx.numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["y"], name="relu")], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    run = profile(model, {"x": np.ones((1, 4, 8, 8), np.float32)}, runs=5, threads=1)
    assert run.times and all(ms > 0 for ms in run.times.values())
